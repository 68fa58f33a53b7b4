"""SecAgg+ building blocks: Shamir sharing, X25519/HKDF keys and sealed bundles, the ChaCha20
mask PRG, the communication graph, quantization, the configuration's rules, and whole rounds
run in memory — no dropouts, dropouts the shares can recover and dropouts they cannot, tampered
shares and bundles, and the unmasked aggregate against plain FedAvg."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from parity.core.fl.aggregation import fedavg
from parity.core.fl.dp import add_central_noise, central_dp_round, clip_update, model_delta
from parity.core.fl.dp_config import DPConfig
from parity.core.fl.errors import FLConfigError
from parity.core.fl.privacy_config import parse_privacy_config
from parity.core.fl.privacy_errors import IncompatibleOptionsError, SecAggError, ShamirError
from parity.core.fl.quantize import (
    decode_sum,
    dequantize_sum,
    encode_update,
    layout_of,
    quantization_step,
    quantize,
)
from parity.core.fl.secagg import (
    KeyAdvert,
    MaskedInput,
    RoundSetup,
    ShareMessage,
    UnmaskReply,
    UnmaskRequest,
    communication_graph,
    plan_round,
    prg_mask,
    round_context,
)
from parity.core.fl.secagg_client import SecAggClient
from parity.core.fl.secagg_config import SecAggConfig, parse_secure_aggregation
from parity.core.fl.secagg_keys import (
    agree,
    generate_key_pair,
    key_pair_from_private,
    open_sealed,
    pairwise_seed,
    seal,
)
from parity.core.fl.secagg_server import (
    UnmaskResult,
    check_adverts,
    neighbour_adverts,
    route_shares,
    sum_masked,
    unmask_request,
    unmask_sum,
)
from parity.core.fl.shamir import PRIME, Share, combine, combine_robust, split_secret

SHAPES = {"fc1.weight": (8, 4), "fc1.bias": (8,), "fc2.weight": (3, 8), "fc2.bias": (3,)}
CONFIG = SecAggConfig(
    num_shares=5,
    reconstruction_threshold=3,
    clipping_range=8.0,
    quantization_range=2**22,
    stage_timeout_seconds=30.0,
)
CONTEXT = round_context("session-1", 4)


def seeded_randbelow(seed: int) -> Callable[[int], int]:
    generator = random.Random(seed)
    return generator.randrange


def seeded_token_bytes(seed: int) -> Callable[[int], bytes]:
    generator = random.Random(seed)
    return generator.randbytes


# ---------------------------------------------------------------------------- Shamir


def test_any_threshold_shares_rebuild_the_secret_and_fewer_are_refused() -> None:
    secret = bytes(range(32))
    shares = split_secret(secret, 3, 5, seeded_randbelow(1))
    for subset in ([0, 1, 2], [1, 3, 4], [0, 2, 4], [0, 1, 2, 3, 4]):
        assert combine([shares[i] for i in subset], 3) == secret
    with pytest.raises(ShamirError, match="2 share\\(s\\) for a secret that needs 3"):
        combine(shares[:2], 3)


def test_a_secret_of_the_full_32_bytes_and_a_64_byte_one_survive_sharing() -> None:
    for secret in (b"\xff" * 32, b"\x00" * 31 + b"\x01", bytes(range(64))):
        shares = split_secret(secret, 2, 3, seeded_randbelow(2))
        assert combine(shares[1:], 2, secret_length=len(secret)) == secret
    with pytest.raises(ShamirError, match="at most 64 bytes"):
        split_secret(b"x" * 65, 2, 3)


def test_shares_below_the_threshold_say_nothing_about_the_secret() -> None:
    # Two shares of a threshold-3 sharing fit a degree-2 polynomial through any secret: adding
    # the third point of that polynomial makes them combine to whatever secret we chose.
    shares = split_secret(b"\x01" * 32, 3, 5, seeded_randbelow(3))
    for candidate in (b"\x00" * 32, b"\x02" * 32, b"\xff" * 32):
        points = [(0, int.from_bytes(candidate, "big")), *((p.index, p.value) for p in shares[:2])]
        third = Share(3, _lagrange(points, 3))
        assert combine([*shares[:2], third], 3) == candidate


def _lagrange(points: Sequence[tuple[int, int]], x: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = term * (x - xj) * pow(xi - xj, -1, PRIME) % PRIME
        total = (total + term) % PRIME
    return total


def test_an_inconsistent_share_is_rejected_when_more_than_threshold_shares_are_given() -> None:
    secret = b"k" * 32
    shares = split_secret(secret, 3, 5, seeded_randbelow(4))
    tampered = [*shares[:4], Share(5, (shares[4].value + 1) % PRIME)]
    with pytest.raises(ShamirError, match="inconsistent"):
        combine(tampered, 3)
    with pytest.raises(ShamirError, match="two different shares with index 2"):
        combine([*shares, Share(2, shares[1].value + 1)], 3)


def test_robust_combination_finds_the_secret_and_names_the_tampered_share() -> None:
    secret = b"s" * 32
    shares = split_secret(secret, 3, 5, seeded_randbelow(5))
    tampered = [shares[0], Share(2, (shares[1].value * 7) % PRIME), *shares[2:]]
    rebuilt, wrong = combine_robust(tampered, 3, lambda s: s == secret)
    assert rebuilt == secret
    assert wrong == [2]
    # With exactly the threshold and one bad share nothing passes the check: refused.
    with pytest.raises(ShamirError, match="no 3 of the 3 shares"):
        combine_robust(tampered[:3], 3, lambda s: s == secret)


def test_share_bytes_round_trip_and_malformed_bytes_are_refused() -> None:
    share = split_secret(b"a" * 32, 2, 3, seeded_randbelow(6))[2]
    assert Share.from_bytes(share.to_bytes()) == share
    with pytest.raises(ShamirError):
        Share.from_bytes(b"\x00" * 10)
    with pytest.raises(ShamirError, match="index is 0"):
        Share.from_bytes(b"\x00\x00" + b"\x01" * 66)


# ---------------------------------------------------------------------------- keys and PRG


def test_key_agreement_and_pairwise_seeds_are_symmetric_and_bound_to_the_round() -> None:
    a, b = generate_key_pair(), generate_key_pair()
    assert agree(a.private, b.public) == agree(b.private, a.public)
    seed_ab = pairwise_seed(a.private, b.public, CONTEXT, "alice", "bob")
    assert seed_ab == pairwise_seed(b.private, a.public, CONTEXT, "bob", "alice")
    assert len(seed_ab) == 32
    assert seed_ab != pairwise_seed(
        a.private, b.public, round_context("session-1", 5), "alice", "bob"
    )
    assert seed_ab != pairwise_seed(a.private, b.public, CONTEXT, "alice", "carol")


def test_a_low_order_public_key_is_refused() -> None:
    with pytest.raises(SecAggError, match="unusable public key"):
        agree(generate_key_pair().private, bytes(32))


def test_sealed_bundles_open_only_for_their_recipient_round_and_unaltered() -> None:
    a, b, c = (key_pair_from_private(bytes([i]) * 32) for i in (1, 2, 3))
    sealed = seal(b"shares", a.private, b.public, CONTEXT, "a", "b")
    assert open_sealed(sealed, b.private, a.public, CONTEXT, "a", "b") == b"shares"
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for attempt in (
        lambda: open_sealed(altered, b.private, a.public, CONTEXT, "a", "b"),
        lambda: open_sealed(sealed, c.private, a.public, CONTEXT, "a", "c"),
        lambda: open_sealed(sealed, b.private, a.public, round_context("x", 1), "a", "b"),
        lambda: open_sealed(sealed, b.private, c.public, CONTEXT, "c", "b"),
    ):
        with pytest.raises(SecAggError, match="do not authenticate"):
            attempt()


def test_the_mask_prg_uses_the_whole_32_byte_seed() -> None:
    seed = bytes(range(32))
    mask = prg_mask(seed, 1000, 2**32)
    assert np.array_equal(mask, prg_mask(seed, 1000, 2**32))
    # A seed folded to 32 bits would ignore these bytes; ours changes the whole stream.
    for position in (0, 4, 16, 31):
        other = bytearray(seed)
        other[position] ^= 1
        assert np.mean(prg_mask(bytes(other), 1000, 2**32) == mask) < 0.01


def test_the_mask_prg_is_uniform_below_the_modulus() -> None:
    for modulus in (2**8, 2**32, 2**64):
        mask = prg_mask(b"\x07" * 32, 100_000, modulus)
        assert mask.dtype == np.uint64
        if modulus < 2**64:
            assert int(mask.max()) < modulus
        mean = float(np.mean(mask.astype(np.float64))) / modulus
        assert abs(mean - 0.5) < 0.01  # the sd of the mean is 0.29 / sqrt(1e5) ~ 0.001
    small = prg_mask(b"\x09" * 32, 80_000, 2**3)
    counts = np.bincount(small.astype(np.int64), minlength=8)
    assert counts.min() > 9_500 and counts.max() < 10_500  # expected 10,000 each


# ---------------------------------------------------------------------------- graph


def test_the_communication_graph_is_symmetric_regular_and_fixed_by_its_seed() -> None:
    ids = [f"runner-{i:02d}" for i in range(20)]
    graph = communication_graph(ids, 7, b"seed")
    for u, neighbours in graph.items():
        assert len(neighbours) == 6
        assert u not in neighbours
        for v in neighbours:
            assert u in graph[v]
    assert graph == communication_graph(list(reversed(ids)), 7, b"seed")
    assert graph != communication_graph(ids, 7, b"other seed")
    # Connected: a ring with extra chords.
    seen, frontier = {ids[0]}, [ids[0]]
    while frontier:
        for v in graph[frontier.pop()]:
            if v not in seen:
                seen.add(v)
                frontier.append(v)
    assert seen == set(ids)


def test_few_participants_get_a_complete_graph_and_duplicates_are_refused() -> None:
    graph = communication_graph(["a", "b", "c", "d"], 5, b"s")
    assert graph == {u: tuple(v for v in "abcd" if v != u) for u in "abcd"}
    with pytest.raises(SecAggError, match="distinct"):
        communication_graph(["a", "a", "b"], 3, b"s")


def test_a_round_below_the_threshold_is_refused_before_it_starts() -> None:
    with pytest.raises(SecAggError, match="2 participants cannot reach"):
        plan_round(["a", "b"], CONFIG, b"g", CONTEXT, 10)


# ---------------------------------------------------------------------------- quantization


def test_stochastic_quantization_is_unbiased_and_within_one_step() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-3, 3, size=1000)
    step = quantization_step(4.0, 17)
    decoded = np.mean(
        [dequantize_sum(quantize(values, 4.0, 17, rng), 1, 4.0, 17) for _ in range(400)], axis=0
    )
    single = dequantize_sum(quantize(values, 4.0, 17, rng), 1, 4.0, 17)
    assert np.max(np.abs(single - values)) < step
    assert np.max(np.abs(decoded - values)) < 0.1 * step * 4  # mean of 400: sd <= step / 40


def test_quantization_clips_to_the_range() -> None:
    levels = quantize(
        np.array([-100.0, -8.0, 0.0, 8.0, 100.0]), 8.0, 2**10, np.random.default_rng(1)
    )
    assert levels.tolist()[0] == 0 and levels.tolist()[1] == 0
    assert levels.tolist()[3] == 2**10 - 1 and levels.tolist()[4] == 2**10 - 1


# ---------------------------------------------------------------------------- a round in memory


def make_updates(n: int, seed: int) -> list[tuple[dict[str, np.ndarray], int]]:
    rng = np.random.default_rng(seed)
    return [
        (
            {
                name: rng.normal(0, 0.5, size=shape).astype(np.float32)
                for name, shape in SHAPES.items()
            },
            int(rng.integers(20, 400)),
        )
        for _ in range(n)
    ]


def ids_of(n: int) -> list[str]:
    return [f"runner-{i:02d}" for i in range(n)]


class Round:
    """A whole SecAgg+ round between in-memory clients and the server functions."""

    def __init__(self, n: int, config: SecAggConfig = CONFIG, seed: int = 0) -> None:
        self.config = config
        self.ids = ids_of(n)
        self.updates = dict(zip(self.ids, make_updates(n, seed), strict=True))
        zero = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
        self.layout = layout_of(zero)
        size = sum(math.prod(s) for _, s in self.layout) + 1
        self.setups = plan_round(self.ids, config, b"graph-seed", CONTEXT, size)
        self.clients = {
            u: SecAggClient(
                self.setups[u],
                token_bytes=seeded_token_bytes(seed * 1000 + i),
                randbelow=seeded_randbelow(seed * 1000 + i),
            )
            for i, u in enumerate(self.ids)
        }
        rng = np.random.default_rng(seed + 1)
        self.quantized = {
            u: encode_update(w, n_ex, config, self.layout, rng)
            for u, (w, n_ex) in self.updates.items()
        }
        self.stored: list[Any] = []  # everything the server holds, for the "no clear update" test
        self.refusals: dict[str, str] = {}

    def run(
        self,
        drop_before_input: Sequence[str] = (),
        silent_in_unmask: Sequence[str] = (),
        tamper: Callable[[dict[str, UnmaskReply]], None] | None = None,
    ) -> UnmaskResult:
        adverts = check_adverts(self.setups, [c.advertise() for c in self.clients.values()])
        relayed = neighbour_adverts(self.setups, adverts)
        messages = [self.clients[u].share_keys(relayed[u]) for u in self.ids]
        bundles, commitments = route_shares(self.setups, adverts, messages)
        self.stored += [adverts, bundles, commitments]
        inputs = [
            self.clients[u].masked_input(bundles.get(u, {}), self.quantized[u])
            for u in self.ids
            if u not in drop_before_input
        ]
        self.stored += inputs
        masked_sum, survivors = sum_masked(self.setups, commitments, inputs)
        request = unmask_request(self.setups, commitments, survivors)
        replies: dict[str, UnmaskReply] = {}
        for u in survivors:
            if u in silent_in_unmask:
                continue
            try:
                replies[u] = self.clients[u].unmask(request)
            except SecAggError as exc:  # a client refusing to help is a silent one to the server
                self.refusals[u] = exc.reason
        if tamper is not None:
            tamper(replies)
        self.stored += [masked_sum, request, *replies.values()]
        result = unmask_sum(
            self.setups, adverts, commitments, masked_sum, request, replies.values()
        )
        return result

    def expected_sum(self, survivors: Sequence[str]) -> np.ndarray:
        total = sum(self.quantized[u].astype(object) for u in survivors)
        return np.asarray(total, dtype=object) % self.config.modulus_range


def test_no_dropouts_the_unmasked_sum_is_exact() -> None:
    game = Round(10)
    result = game.run()
    assert result.survivors == tuple(game.ids) and result.dropped == ()
    assert result.rejected_shares == ()
    assert result.total.tolist() == game.expected_sum(game.ids).tolist()


def test_the_secure_aggregate_equals_plain_fedavg_within_quantization_error() -> None:
    game = Round(10)
    result = game.run()
    mean_delta = decode_sum(result.total, 10, CONFIG, game.layout)
    plain = fedavg(list(game.updates.values()))
    step = quantization_step(CONFIG.clipping_range, CONFIG.quantization_range)
    # Per element: each participant's rounding moves its weighted value by < one step, and the
    # weights' sum by < one step in total per participant; dividing by the weights' sum bounds it.
    total_weight = sum(
        min(n, CONFIG.max_weight) / CONFIG.max_weight for _, n in game.updates.values()
    )
    bound = 10 * step / total_weight * (1 + 8.0)
    for name in SHAPES:
        assert np.max(np.abs(mean_delta[name] - plain[name])) < bound
    assert bound < 1e-3  # the check above is meaningful at this precision


def test_dropouts_after_sharing_are_recovered_from_the_survivors_shares() -> None:
    game = Round(10)
    dropped = ["runner-03", "runner-07"]
    result = game.run(drop_before_input=dropped)
    survivors = [u for u in game.ids if u not in dropped]
    assert result.dropped == tuple(dropped)
    assert result.total.tolist() == game.expected_sum(survivors).tolist()
    mean_delta = decode_sum(result.total, len(survivors), CONFIG, game.layout)
    plain = fedavg([game.updates[u] for u in survivors])
    for name in SHAPES:
        assert np.max(np.abs(mean_delta[name] - plain[name])) < 1e-3


def test_too_many_dropouts_among_one_neighbourhood_fail_the_round_and_say_whose() -> None:
    game = Round(10)
    target = "runner-05"
    neighbours = list(game.setups[target].neighbours)
    # The target survives, but three of its four neighbours drop: only itself and one
    # neighbour hold shares of its self-mask seed, below the threshold of 3.
    with pytest.raises(SecAggError) as caught:
        game.run(drop_before_input=neighbours[:3])
    # The target itself refuses to help unmask (its input would be nearly alone) ...
    assert "only 2 of our share holders survived" in game.refusals[target]
    # ... and the server cannot rebuild a secret: the round fails and says whose and why.
    assert caught.value.field in game.ids
    assert "cannot be rebuilt" in caught.value.reason
    assert "needs 3" in caught.value.reason


def test_silent_survivors_in_the_unmask_stage_are_tolerated_down_to_the_threshold() -> None:
    game = Round(10)
    result = game.run(drop_before_input=["runner-01"], silent_in_unmask=["runner-02"])
    survivors = [u for u in game.ids if u != "runner-01"]
    assert result.total.tolist() == game.expected_sum(survivors).tolist()


def test_a_tampered_share_is_detected_named_and_outvoted() -> None:
    game = Round(10)
    victim = "runner-04"
    liar = game.setups[victim].neighbours[0]

    def tamper(replies: dict[str, UnmaskReply]) -> None:
        reply = replies[liar]
        share = Share.from_bytes(reply.self_mask_shares[victim])
        forged = dict(reply.self_mask_shares)
        forged[victim] = Share(share.index, (share.value + 12345) % PRIME).to_bytes()
        replies[liar] = UnmaskReply(liar, forged, reply.key_shares)

    result = game.run(tamper=tamper)
    assert (liar, victim) in result.rejected_shares
    assert result.total.tolist() == game.expected_sum(game.ids).tolist()


def test_a_tampered_share_with_no_spare_shares_fails_the_round() -> None:
    game = Round(10)
    victim = "runner-04"
    neighbours = list(game.setups[victim].neighbours)
    liar = neighbours[3]

    def tamper(replies: dict[str, UnmaskReply]) -> None:
        reply = replies[liar]
        share = Share.from_bytes(reply.self_mask_shares[victim])
        forged = dict(reply.self_mask_shares)
        forged[victim] = Share(share.index, share.value ^ 1).to_bytes()
        replies[liar] = UnmaskReply(liar, forged, reply.key_shares)

    # Two neighbours silent: exactly 3 holders answer (victim, two neighbours), one lies.
    with pytest.raises(SecAggError, match="self-mask seed of 'runner-04' cannot be rebuilt"):
        game.run(silent_in_unmask=neighbours[:2], tamper=tamper)


def test_a_share_claiming_another_holders_index_is_refused() -> None:
    game = Round(10)
    victim = "runner-06"
    liar = game.setups[victim].neighbours[1]
    honest = game.setups[victim].neighbours[2]

    def tamper(replies: dict[str, UnmaskReply]) -> None:
        forged = dict(replies[liar].self_mask_shares)
        forged[victim] = replies[honest].self_mask_shares[victim]
        replies[liar] = UnmaskReply(liar, forged, replies[liar].key_shares)

    result = game.run(tamper=tamper)
    assert (liar, victim) in result.rejected_shares
    assert result.total.tolist() == game.expected_sum(game.ids).tolist()


def test_a_bundle_altered_by_the_server_is_refused_by_its_recipient() -> None:
    game = Round(6)
    adverts = check_adverts(game.setups, [c.advertise() for c in game.clients.values()])
    relayed = neighbour_adverts(game.setups, adverts)
    messages = [game.clients[u].share_keys(relayed[u]) for u in game.ids]
    bundles, _ = route_shares(game.setups, adverts, messages)
    recipient = game.ids[0]
    sender = next(iter(bundles[recipient]))
    forged = dict(bundles[recipient])
    forged[sender] = forged[sender][:-1] + bytes([forged[sender][-1] ^ 0x80])
    with pytest.raises(SecAggError, match=f"shares from '{sender}' do not authenticate"):
        game.clients[recipient].masked_input(forged, game.quantized[recipient])


def test_clients_refuse_an_unmask_request_that_could_expose_an_input() -> None:
    game = Round(6)
    game.run()
    client = game.clients["runner-00"]
    others = [u for u in game.ids if u != "runner-00"]
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        client.unmask(UnmaskRequest(tuple(game.ids), ("runner-01",)))
    with pytest.raises(SecAggError, match="only 1 of our share holders survived"):
        client.unmask(UnmaskRequest(("runner-00",), tuple(others)))


def test_the_server_refuses_to_unmask_fewer_inputs_than_the_threshold() -> None:
    game = Round(6)
    with pytest.raises(SecAggError, match="only 2 participants sent a masked input"):
        unmask_request(game.setups, game.ids, game.ids[:2])


def test_the_server_refuses_malformed_or_foreign_stage_messages() -> None:
    game = Round(6)
    adverts = [c.advertise() for c in game.clients.values()]
    with pytest.raises(SecAggError, match="not a participant"):
        check_adverts(game.setups, [*adverts, KeyAdvert("stranger", b"a" * 32, b"b" * 32)])
    with pytest.raises(SecAggError, match="twice"):
        check_adverts(game.setups, [*adverts, adverts[0]])
    copied = KeyAdvert(adverts[1].participant, adverts[0].c_public, adverts[1].s_public)
    with pytest.raises(SecAggError, match="another participant uses"):
        check_adverts(game.setups, [adverts[0], copied])
    size = game.setups[game.ids[0]].vector_size
    with pytest.raises(SecAggError, match="without having shared keys"):
        sum_masked(game.setups, game.ids[1:], [MaskedInput(game.ids[0], np.zeros(size, np.uint64))])
    with pytest.raises(SecAggError, match="outside the modulus"):
        sum_masked(
            game.setups, game.ids, [MaskedInput(game.ids[0], np.full(size, 2**40, np.uint64))]
        )
    with pytest.raises(SecAggError, match="uint64 values"):
        sum_masked(game.setups, game.ids, [MaskedInput(game.ids[0], np.zeros(size - 1, np.uint64))])


def test_the_server_never_holds_an_individual_quantized_update() -> None:
    game = Round(6)
    game.run(drop_before_input=["runner-02"])
    for vector in game.quantized.values():
        for item in game.stored:
            if isinstance(item, MaskedInput):
                # A masked vector agrees with its clear input about as often as chance would.
                assert np.mean(item.vector == vector) < 0.01
            elif isinstance(item, np.ndarray):
                assert np.mean(item == vector) < 0.01


def test_setups_put_each_participant_in_its_neighbours_holder_lists() -> None:
    setups = plan_round(ids_of(12), CONFIG, b"g", CONTEXT, 3)
    for u, setup in setups.items():
        assert isinstance(setup, RoundSetup)
        assert len(setup.holders) == CONFIG.num_shares
        for v in setup.neighbours:
            assert u in setups[v].holders


# ---------------------------------------------------------------------------- configuration


VALID: dict[str, Any] = {
    "mode": "secagg_plus",
    "num_shares": 5,
    "reconstruction_threshold": 3,
    "clipping_range": 8.0,
    "quantization_range": 2**22,
    "stage_timeout_seconds": 30,
}


def test_the_nested_and_flat_forms_give_the_same_config() -> None:
    nested = parse_secure_aggregation({"secure_aggregation": VALID})
    flat_fields = {k: v for k, v in VALID.items() if k != "mode"}
    flat = parse_secure_aggregation({"secure_aggregation": True, **flat_fields})
    assert nested == flat
    assert nested is not None and nested.modulus_range == 2**32 and nested.max_weight == 1000
    assert parse_secure_aggregation({"secure_aggregation": False}) is None


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"num_shares": None}, "num_shares", "is required"),
        ({"mode": "secagg"}, "mode", "must be 'secagg_plus'"),
        ({"num_shares": 4}, "num_shares", "must be odd"),
        ({"num_shares": 1}, "num_shares", "at least 3"),
        ({"reconstruction_threshold": 2}, "reconstruction_threshold", "more than half"),
        ({"reconstruction_threshold": 6}, "reconstruction_threshold", "at most 5"),
        ({"clipping_range": float("nan")}, "clipping_range", "finite"),
        ({"clipping_range": 0.5}, "clipping_range", "at least 1"),
        ({"quantization_range": 1}, "quantization_range", "at least 2"),
        ({"modulus_range": 3 * 2**20}, "modulus_range", "power of two"),
        ({"modulus_range": 2**10}, "quantization_range", "must not exceed modulus_range"),
        ({"max_weight": float("inf")}, "max_weight", "finite"),
        ({"stage_timeout_seconds": 0}, "stage_timeout_seconds", "greater than 0"),
        ({"stage_timeout_seconds": True}, "stage_timeout_seconds", "must be a number"),
        ({"extra": 1}, "extra", "unknown field"),
    ],
)
def test_each_bad_secagg_field_is_named(change: dict[str, Any], field: str, message: str) -> None:
    given = {**VALID, **change}
    with pytest.raises(FLConfigError) as caught:
        parse_secure_aggregation({"secure_aggregation": {k: v for k, v in given.items()}})
    assert caught.value.field == f"privacy_config.secure_aggregation.{field}"
    assert message in caught.value.reason


def test_secure_aggregation_with_a_per_update_method_is_incompatible() -> None:
    for method in ("krum", "fedmedian", "trimmed_mean", "multi_krum"):
        with pytest.raises(IncompatibleOptionsError) as caught:
            parse_privacy_config({"secure_aggregation": VALID}, aggregation_method=method)
        assert caught.value.field == "privacy_config.secure_aggregation"
    parsed = parse_privacy_config({"secure_aggregation": VALID}, aggregation_method="fedadam")
    assert parsed.secure_aggregation is not None


def test_a_modulus_too_small_for_the_participants_is_refused() -> None:
    small = {**VALID, "modulus_range": 2**24}
    parse_privacy_config({"secure_aggregation": small}, max_participants=3)
    with pytest.raises(FLConfigError) as caught:
        parse_privacy_config({"secure_aggregation": small}, max_participants=10)
    assert caught.value.field == "privacy_config.secure_aggregation.modulus_range"
    assert "too small for 10 participants" in caught.value.reason


def test_the_flat_form_carries_both_features_with_mode_belonging_to_dp() -> None:
    flat = {
        "differential_privacy": True,
        "mode": "central",
        "noise_multiplier": 1.0,
        "l2_norm_clip": 1.0,
        "delta": 1e-5,
        "secure_aggregation": True,
        **{k: v for k, v in VALID.items() if k != "mode"},
    }
    parsed = parse_privacy_config(flat, aggregation_method="fedavg", max_participants=10)
    assert parsed.differential_privacy is not None
    assert parsed.differential_privacy.mode == "central"
    assert parsed.secure_aggregation == parse_secure_aggregation({"secure_aggregation": VALID})


def test_central_dp_on_a_secure_sum_matches_the_servers_own_clipped_mean() -> None:
    # Runners clip their deltas and weigh themselves equally; the server adds the noise to the
    # unmasked mean. Without noise this is the central DP round within quantization error, and
    # the noise has the central sd z * C / m.
    dp = DPConfig(mode="central", noise_multiplier=0.0, delta=1e-5, l2_norm_clip=1.0)
    game = Round(8)
    global_weights = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    rng = np.random.default_rng(11)
    for u, (weights, _) in game.updates.items():
        clipped = clip_update(model_delta(weights, global_weights), dp.l2_norm_clip or 0.0)
        game.quantized[u] = encode_update(
            clipped.delta, int(CONFIG.max_weight), CONFIG, game.layout, rng
        )
    result = game.run()
    mean = decode_sum(result.total, 8, CONFIG, game.layout)
    reference = central_dp_round(dp, global_weights, [w for w, _ in game.updates.values()], rng)
    for name in SHAPES:
        assert np.max(np.abs(mean[name] - reference.weights[name])) < 1e-4
    noisy_config = DPConfig(mode="central", noise_multiplier=2.0, delta=1e-5, l2_norm_clip=1.0)
    big = {"w": np.zeros(20_000)}
    noised, std = add_central_noise(big, noisy_config, 8, np.random.default_rng(12))
    assert std == pytest.approx(2.0 * 1.0 / 8)
    assert np.std(noised["w"]) == pytest.approx(std, rel=0.05)


def test_a_share_message_that_leaves_out_an_advertised_neighbour_is_refused() -> None:
    game = Round(6)
    adverts = check_adverts(game.setups, [c.advertise() for c in game.clients.values()])
    relayed = neighbour_adverts(game.setups, adverts)
    messages = [game.clients[u].share_keys(relayed[u]) for u in game.ids]
    sender = messages[0]
    left_out = sorted(sender.sealed)[0]
    short = ShareMessage(
        sender.sender, sender.commitment, {k: v for k, v in sender.sealed.items() if k != left_out}
    )
    with pytest.raises(SecAggError, match=f"sent no shares to its neighbour\\(s\\) '{left_out}'"):
        route_shares(game.setups, adverts, [short, *messages[1:]])
    # A neighbour that never advertised keys is owed nothing.
    absent = {k: v for k, v in adverts.items() if k != left_out}
    route_shares(game.setups, absent, [short])
