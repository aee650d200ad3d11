/* What the AMX kernels share (linear_quant_amx.c, linear_quant_amx_split.c): the tile shape,
 * asking Linux for the tiles, configuring them, and the entry points where the build has no
 * AMX. Tiles are 16 rows of 64 bytes: 16 x 32 bf16 (A, B) or 16 x 16 float32 (C).
 */
#ifndef TGI_CPU_KERNELS_AMX_H
#define TGI_CPU_KERNELS_AMX_H

#include "common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__) && \
    defined(__AVX512BF16__)
#define HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TILE 16                 /* rows of every tile, and columns of C */
#define KB 32                   /* bf16 inputs per tile row (64 bytes) */
#define BLOCK_ELEMS (TILE * KB) /* one A or B tile's bf16 elements */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

/* Linux hands AMX state to a process only on request (once; later calls are no-ops). */
static inline int amx_permitted(void) {
    static int state; /* 0 unknown, 1 granted, -1 refused */
    if (!state) state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) ? -1 : 1;
    return state == 1;
}

/* The calling thread's tiles 0..count-1 as 16 rows of 64 bytes. */
static inline void configure_tiles(int count) {
    TileConfig config = {0};
    config.palette = 1;
    for (int t = 0; t < count; t++) {
        config.rows[t] = TILE;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
}

/* C tiles 0..n-1 (n <= 4) to c[0..n-1]: tile numbers are immediates, hence the branches. */
static inline void store_c_tiles(int n, float (*c)[TILE][TILE]) {
    _tile_stored(0, c[0], 64);
    if (n > 1) _tile_stored(1, c[1], 64);
    if (n > 2) _tile_stored(2, c[2], 64);
    if (n > 3) _tile_stored(3, c[3], 64);
}

/* The shapes both kernels take: whole 32-input blocks and groups. */
static inline int amx_shapes_ok(int rows, int outputs, int inputs, int group) {
    return rows > 0 && outputs > 0 && inputs > 0 && inputs % KB == 0 && group > 0 &&
           group % KB == 0 && inputs % group == 0;
}
#else
#define HAVE_AMX 0
#endif

#endif
