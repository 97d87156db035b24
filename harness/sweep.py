"""The built-in sweep `parity run` uses when no case is given: both layer parities, lengths across
the window boundary, decode and chunked-prefill positions (decode across the sliding cache ring's
wrap), a padded batch, dominant sinks, token generation with dominant and zero sinks on both layer
kinds, decode across the tile boundaries 512, 2048 and 4096, the last position of gpt-oss's context
(131,071, decoded from a cache past 65,536 keys on a full layer; small dims, both parities), full dims.

Its budget is a minute on 2 cores with every built-in candidate (`parity bench` measures it). The
131,071 rows at full dims cost far more than everything else together (33 s of 58 s here, over 13
minutes on a loaded AVX2 machine), so they are the `long` tier (`parity run --long`, the slow test
tier); the default still checks position 131,071 on both layer kinds at small dims."""

from __future__ import annotations

from harness.case import Case


def default_cases(quick: bool = False, long: bool = False) -> list[Case]:
    cases = []
    for layer in (0, 1):  # even = sliding window, odd = full attention
        for n in ((1, 128, 129) if quick else (1, 127, 128, 129, 257)):
            cases.append(Case(layer=layer, lengths=(n,), weight_seed=layer, input_seed=n))
    cases += [
        # prefill 128 then decode positions 128, 129, 130: the first tokens to lose the oldest key
        Case(layer=0, lengths=(131,), plan="decode", decode_steps=3, weight_seed=2, input_seed=2),
        Case(layer=0, lengths=(200,), plan="chunked", chunk_offset=100, weight_seed=3, input_seed=3),
        Case(layer=0, lengths=(130, 5, 64), padding="left", weight_seed=4, input_seed=4),
        Case(layer=1, lengths=(130, 5, 64), padding="right", weight_seed=5, input_seed=5),
        Case(layer=0, lengths=(129,), sinks="dominant", scale="sharp", weight_seed=6, input_seed=6),
        # decode steps where NxDI's sliding cache ring (W-1 slots) fills and wraps: positions 126..129 and 254..257
        Case(layer=0, lengths=(130,), plan="decode", decode_steps=4, weight_seed=8, input_seed=8),
        Case(layer=0, lengths=(258, 40), plan="decode", decode_steps=4, weight_seed=9, input_seed=9),
    ]
    # token generation with dominant and with zero sinks, on both layer kinds, decoded and from a cache:
    # a block that handles sinks only in context encoding passes every small-sink step (ratio 4.7)
    for layer in (0, 1):
        for sinks in ("dominant", "zero"):
            seed = 30 + 2 * layer + (sinks == "zero")
            cases.append(Case(layer=layer, lengths=(140,), plan="decode", decode_steps=3, sinks=sinks,
                              weight_seed=seed, input_seed=seed))
            if not quick:
                cases.append(Case(layer=layer, lengths=(600,), plan="from_cache", decode_steps=2, sinks=sinks,
                                  weight_seed=seed, input_seed=seed + 100))
    # decode steps across the tile boundaries where Neuron ports broke (511/512, 2047/2048, 4095/4096),
    # from a cache of every earlier position, on both layer kinds
    for n in ((513,) if quick else (513, 2049, 4097)):
        cases += [Case(layer=layer, lengths=(n,), plan="from_cache", decode_steps=2, weight_seed=40 + layer,
                       input_seed=n + layer) for layer in (0, 1)]
    # position 131,071 from a cache of every earlier position, on both parities (two generated tokens)
    cases += [Case(layer=layer, lengths=(131072,), plan="from_cache", decode_steps=2, weight_seed=10 + layer,
                   input_seed=10 + layer) for layer in (0, 1)]
    if not quick:
        cases += [Case(preset="full", layer=layer, lengths=(300,), weight_seed=7, input_seed=7) for layer in (0, 1)]
    if long:
        cases += [Case(preset="full", layer=layer, lengths=(131072,), plan="from_cache", decode_steps=1,
                       weight_seed=7, input_seed=20 + layer) for layer in (0, 1)]
    return cases
