"""Tokenization for the server: loading, encoding, chat templates, streaming detokenization.

Nothing here imports torch or transformers. Modules:
- ``loader``: ``load_tokenizer`` (local folder, ``.gguf`` file or Hub id);
- ``gguf_metadata`` / ``gguf_tokenizer``: a tokenizer rebuilt from GGUF metadata;
- ``tokenizer``: ``Tokenizer``, the wrapper every request uses;
- ``base``: ``TokenizerBase``, the special tokens and template both tokenizers share;
- ``chat_template``: ``ChatTemplate`` and ``ChatTemplateError``;
- ``detokenizer``: ``IncrementalDetokenizer`` for streamed text;
- ``stop``: ``make_stop_checker`` (the contract's ``StopChecker``);
- ``token_ids``: ``TokenIdsTokenizer`` for SKIP_TOKENIZER_IN_TGI;
- ``protocol``: ``TokenizerLike``, the interface both tokenizers implement;
- ``vocabulary``: ``token_bytes``, each token's raw bytes (for grammar-constrained generation).
"""

# ruff: noqa: E402  (the extra is checked before the imports that need it)
from tgi_core._extras import require_frontend

require_frontend(__name__)

from tgi_core.tokenization.chat_template import ChatTemplate, ChatTemplateError
from tgi_core.tokenization.detokenizer import IncrementalDetokenizer
from tgi_core.tokenization.loader import TokenizerLoadError, load_tokenizer
from tgi_core.tokenization.protocol import TokenizerLike, TokenOffset
from tgi_core.tokenization.stop import StopSequenceChecker, make_stop_checker
from tgi_core.tokenization.token_ids import TokenIdsError, TokenIdsTokenizer, parse_token_ids
from tgi_core.tokenization.tokenizer import TokenizationError, Tokenizer
from tgi_core.tokenization.vocabulary import VocabularyError, token_bytes

__all__ = [
    "ChatTemplate",
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "StopSequenceChecker",
    "TokenIdsError",
    "TokenIdsTokenizer",
    "TokenOffset",
    "TokenizationError",
    "Tokenizer",
    "TokenizerLike",
    "TokenizerLoadError",
    "VocabularyError",
    "load_tokenizer",
    "make_stop_checker",
    "parse_token_ids",
    "token_bytes",
]
