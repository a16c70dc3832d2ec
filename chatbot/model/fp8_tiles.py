"""Tile choices for the Triton FP8 matmuls, per (rows, N, K): no Triton import, so they are testable anywhere.

Decoding multiplies a few rows (one per running request) by every weight: it is bound by reading the
weights, so what matters is that enough programs stream them at once. An H100 has 132 SMs; Qwen3-0.6B's
layers with N = 1024 outputs (o_proj, down_proj) cut into 64-wide tiles give 16 programs, an eighth of
the GPU. For M <= 16 rows the kernel therefore takes narrower tiles (32 outputs), whole 128-column K
blocks (one weight scale per tile and K block, applied to the block's dot product) and splits K across
programs (split-K) until there are about ``TARGET_PROGRAMS`` of them; the partial sums are added after.

``SMALL_M_TILES`` holds the tiles for Qwen3-0.6B's shapes (q/k/v and gate/up packed or not); other
shapes get the same rule. They are starting points chosen from the shapes, not measured: the GPU report
(``tests/gpu_report.sh``) times each shape against cuBLAS BF16 on a real GPU.

Triton compiles a kernel once per distinct value of its ``constexpr`` arguments and per class of its
integer arguments (an integer equal to 1, or divisible by 16, gets its own variant). ``variant_key``
names the variant a row count runs, so that every variant can be compiled at load (``warm_rows``)
instead of stalling a request the first time a batch of that size runs.
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_M_MAX = 16  # rows up to this run the retiled kernel
TARGET_PROGRAMS = 128  # about one program per SM on an H100 (132) or A100 (108, a few in a second wave)
SCALE_BLOCK = 128  # the retiled kernel needs 128x128 quantization blocks (Qwen's FP8 checkpoints)


@dataclass(frozen=True)
class TileConfig:
    """One launch shape: tile sizes, K split and the Triton launch options."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    small_m: bool = False  # the retiled kernel (M <= 16, 128x128 blocks) rather than the general one

    def programs(self, rows: int, n: int) -> int:
        return -(-rows // self.block_m) * -(-n // self.block_n) * self.split_k


def _small(block_n: int, split_k: int, num_stages: int = 4) -> TileConfig:
    return TileConfig(SMALL_M_MAX, block_n, SCALE_BLOCK, split_k, num_warps=4, num_stages=num_stages, small_m=True)


# (N, K) -> tiles for M <= 16. Comments: programs = N / block_n * split_k, and K blocks per program.
SMALL_M_TILES: dict[tuple[int, int], TileConfig] = {
    (4096, 1024): _small(64, 2),  # q/k/v packed: 64 x 2 = 128 programs, 4 K blocks each
    (6144, 1024): _small(64, 2),  # gate/up packed: 96 x 2 = 192, 4 K blocks
    (3072, 1024): _small(32, 2),  # gate or up: 96 x 2 = 192, 4 K blocks
    (2048, 1024): _small(32, 2),  # q_proj: 64 x 2 = 128, 4 K blocks
    (1024, 1024): _small(32, 4),  # k_proj, v_proj: 32 x 4 = 128, 2 K blocks
    (1024, 2048): _small(32, 4),  # o_proj: 32 x 4 = 128, 4 K blocks
    (1024, 3072): _small(32, 6, num_stages=5),  # down_proj: 32 x 6 = 192, 4 K blocks
}


def small_m_tiles(n: int, k: int) -> TileConfig:
    """Tiles for M <= 16 rows of an [N, K] weight: the table's, else narrow tiles and split-K up to
    ``TARGET_PROGRAMS`` programs (each keeping at least two K blocks)."""
    n, k = int(n), int(k)  # weight shapes: fixed, so traced (symbolic) sizes may be specialized
    known = SMALL_M_TILES.get((n, k))
    if known is not None:
        return known
    block_n = 32 if n <= 2048 else 64
    tiles = -(-n // block_n)
    k_blocks = -(-k // SCALE_BLOCK)
    split = 1
    while tiles * split < TARGET_PROGRAMS and k_blocks // (split * 2) >= 2:
        split *= 2
    return _small(block_n, split)


def general_tiles(rows: int, block_k: int) -> TileConfig:
    """Tiles of the general kernel (any rows, any block size): 64x64 tiles, K tiles of up to 64 columns."""
    return TileConfig(SMALL_M_MAX if rows <= SMALL_M_MAX else 64, 64, min(64, block_k), num_warps=4, num_stages=3)


def choose_tiles(rows: int, n: int, k: int, block: tuple[int, int]) -> TileConfig:
    """The launch for ``rows`` x [K] @ [N, K]^T with ``block`` quantization blocks."""
    if rows <= SMALL_M_MAX and block[1] == SCALE_BLOCK and block[0] % 64 == 0:  # a tile within one scale block
        return small_m_tiles(n, k)
    return general_tiles(rows, block[1])


def variant_key(rows: int, n: int, k: int, block: tuple[int, int]) -> tuple:
    """What Triton compiles separately for this row count: the tiles, and M's class (1, divisible by 16, other)."""
    rows_class = "one" if rows == 1 else "16n" if rows % 16 == 0 else "any"
    return choose_tiles(rows, n, k, block), rows_class


def warm_rows(n: int, k: int, block: tuple[int, int], max_rows: int) -> list[int]:
    """The fewest row counts in 1..max_rows that run every variant that 1..max_rows rows run."""
    chosen: dict[tuple, int] = {}
    for rows in range(1, max_rows + 1):
        chosen.setdefault(variant_key(rows, n, k, block), rows)
    return sorted(chosen.values())
