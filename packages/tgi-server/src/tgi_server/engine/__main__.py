"""``python -m tgi_server.engine --engine-socket PATH [launcher flags...]``: the engine process."""

from tgi_server.engine.process import main

raise SystemExit(main())
