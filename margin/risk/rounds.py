"""Oracle rounds to aligned, evenly sampled price series (pure: the keeper reads the rounds,
an auditor re-reads them, both get the same series).

Per feed, the rounds of a round-id window ``[first, last]`` as ``getRoundData`` returns them;
a round that is missing or unusable (updatedAt 0, answer <= 0) is skipped. Prices are the
answers scaled to WAD as the contract's OracleLib does (times 10^(18-d), or floored for d > 18).

Sampling (one grid for every feed, so returns line up for the correlations):

* ``end`` = the smallest ``updatedAt`` of the feeds' last rounds (the contract checks the
  proposal's ``asOf`` equals it), ``start`` = the largest ``updatedAt`` of their first
  usable rounds;
* sample times ``end - k·interval`` for k = 0, 1, ... while ``>= start``, in increasing order;
* the sample of a feed at time t: walking its usable rounds in round-id order from the first,
  move to the next round while that one's ``updatedAt <= t``; the price of the round reached
  (for a feed whose times increase with the round id: its last round published by t).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from margin.risk.ewma import CalibrationError, OracleRound, TooFewRounds

#: Samples per series at most (bounds the work of a recomputation).
MAX_SAMPLES = 20_000


@dataclass(frozen=True)
class FeedRound:
    round_id: int
    answer: int  # raw, in the feed's decimals
    updated_at: int


def scale_answer_down(answer: int, decimals: int) -> int:
    """OracleLib._scaled: the answer in WAD (floored for more than 18 decimals)."""
    if decimals > 36:
        raise CalibrationError(f"feed decimals {decimals} above 36")
    if decimals <= 18:
        return answer * int(10 ** (18 - decimals))
    return answer // int(10 ** (decimals - 18))


def usable(rounds: Sequence[FeedRound]) -> list[FeedRound]:
    """The rounds a recalibration uses: complete, positive, in round-id order."""
    return sorted(
        (r for r in rounds if r.updated_at > 0 and r.answer > 0), key=lambda r: r.round_id
    )


def sample_aligned(
    feeds: Sequence[Sequence[FeedRound]], decimals: Sequence[int], interval: int
) -> tuple[int, list[list[OracleRound]]]:
    """(end, one sampled series per feed) — see the module. Raises ``TooFewRounds`` when the
    window gives fewer than two samples."""
    if interval <= 0:
        raise CalibrationError(f"sampling interval must be positive, got {interval}")
    cleaned = [usable(f) for f in feeds]
    if not cleaned or any(not f for f in cleaned):
        raise TooFewRounds("a feed has no usable round in its window")
    end = min(f[-1].updated_at for f in cleaned)
    start = max(f[0].updated_at for f in cleaned)
    if end < start:
        raise TooFewRounds("the feeds' windows do not overlap in time")
    count = (end - start) // interval + 1
    if count < 2:
        raise TooFewRounds(f"{count} sample(s) in the window: at least 2 are needed")
    count = min(count, MAX_SAMPLES)
    times = [end - k * interval for k in range(count - 1, -1, -1)]
    series: list[list[OracleRound]] = []
    for f, d in zip(cleaned, decimals, strict=True):
        out: list[OracleRound] = []
        i = 0
        for t in times:
            while i + 1 < len(f) and f[i + 1].updated_at <= t:
                i += 1
            out.append(OracleRound(t, scale_answer_down(f[i].answer, d)))
        series.append(out)
    return end, series
