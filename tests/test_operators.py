"""The simulated operators of a Shapes-CIR pilot: what they see, when they correct, how often they err."""

from __future__ import annotations

import math
import random
import re

import pytest

from isacir.errors import ConfigError
from isacir_lab.shapes.operators import Operator, OperatorConfig, decide, reword
from isacir_lab.shapes.phrasing import parse_any, parse_modifier
from isacir_lab.shapes.pilot import LEFT_OUT, PILOT_PHRASINGS, PilotConfig, generate_pilot, load_pilot, simulate_pilot
from isacir_lab.shapes.world import PHRASES, ShapesConfig

pytestmark = pytest.mark.lab

CAREFUL = OperatorConfig(wrong_confirm=0.0, wrong_reject=0.0)


def test_oracle_confirms_a_shown_target_and_otherwise_rejects_the_first_three():
    rng = random.Random(0)
    oracle = OperatorConfig.oracle()
    d = decide([5, 6, 7, 8], {7}, {5}, oracle, rng)
    assert (d.confirm, d.wrong, d.reject) == (7, False, [])
    d = decide([5, 6, 8, 9, 10], {7}, {5}, oracle, rng)
    assert d.missed and d.reject == [5, 6, 8]


def test_a_careful_operator_judges_only_what_is_shown():
    rng = random.Random(0)
    assert decide([1, 2, 3], {3}, set(), CAREFUL, rng).confirm == 3
    d = decide([1, 2, 3, 4], {99}, {2}, CAREFUL, rng)
    assert d.missed and d.reject == [1, 2, 3] and 99 not in d.reject


def test_a_wrong_confirmation_is_a_near_miss_ranked_above_the_target():
    always = OperatorConfig(wrong_confirm=1.0, wrong_reject=0.0)
    rng = random.Random(0)
    d = decide([4, 2, 9, 3], {3}, {9}, always, rng)
    assert (d.confirm, d.wrong) == (9, True)
    # a near miss below the first shown target does not lure
    d = decide([3, 9], {3}, {9}, always, rng)
    assert (d.confirm, d.wrong) == (3, False)
    # nor does an item that is not a near miss
    d = decide([4, 2], {3}, {9}, always, rng)
    assert d.missed and not d.wrong


def test_an_overlooked_target_is_rejected_when_it_is_among_the_first_three():
    always = OperatorConfig(wrong_confirm=0.0, wrong_reject=1.0)
    d = decide([1, 3, 2, 4], {3}, set(), always, random.Random(0))
    assert d.missed and d.overlooked and 3 in d.reject


@pytest.mark.parametrize("rate", [0.03, 0.1])
def test_error_rates_over_many_draws(rate):
    """Each slip happens at its stated rate, within four binomial standard deviations."""
    n = 20_000
    rng = random.Random(1)
    config = OperatorConfig(wrong_confirm=rate, wrong_reject=rate)
    lured = sum(decide([9, 3], {3}, {9}, config, rng).wrong for _ in range(n))
    # the lure is tried first, so an overlook can only happen when the lure did not fire
    overlooked = sum(decide([3, 9], {3}, set(), config, rng).overlooked for _ in range(n))
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(lured - n * rate) < 4 * sd
    assert abs(overlooked - n * rate) < 4 * sd


def test_operators_word_changes_in_their_own_habits():
    rng = random.Random(3)
    text = "the red circle: now in blue"
    crew = [Operator.draw(i, PILOT_PHRASINGS, 1.0, rng) for i in range(20)]
    for person in crew:
        out = person.word("colour", text, rng)
        selector, template, value = parse_modifier("colour", out)
        assert (selector, value) == ("red circle", "blue")
        assert template == person.favourite["colour"] and template != LEFT_OUT["colour"]
    # habits differ between people where the family has a choice
    assert len({p.favourite["colour"] for p in crew}) == len(PILOT_PHRASINGS["colour"])
    # a habit of 0.8 keeps about four in five of one person's wordings
    person = crew[0]
    firsts = [parse_modifier("colour", person.word("colour", text, rng))[1] for _ in range(4000)]
    share = firsts.count(person.favourite["colour"]) / len(firsts)
    assert share == 1.0
    loose = Operator(0, person.favourite, PILOT_PHRASINGS, 0.8)
    share = [parse_modifier("colour", loose.word("colour", text, rng))[1] for _ in range(4000)].count(
        person.favourite["colour"]
    ) / 4000
    assert abs(share - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 4000)


def test_searching_again_uses_other_words_and_never_the_left_out_phrasing():
    rng = random.Random(4)
    person = Operator.draw(0, PILOT_PHRASINGS, 0.8, rng)
    for kind in PHRASES:
        first = person.word(kind, _example(kind), rng)
        for _ in range(50):
            again = person.word_again(kind, first, rng)
            assert again != first
            used = _phrasing(kind, again)
            assert used != LEFT_OUT[kind]


def test_reword_keeps_the_edit():
    assert reword("size", "the red circle: bigger please", "make it {comparative}") == "the red circle: make it bigger"
    assert reword("move", "shift it to the top", "put it in the {value}") == "put it in the top"
    with pytest.raises(ValueError, match="no phrasing"):
        reword("move", "sing it a song", "put it in the {value}")


def test_bad_operator_settings_are_refused():
    for bad in (
        OperatorConfig(kind="psychic"),
        OperatorConfig(unjudged=1.0),
        OperatorConfig(wrong_confirm=-0.1),
        OperatorConfig(count=0),
    ):
        with pytest.raises(ConfigError):
            bad.check()


# -- the whole pilot against a scripted service ----------------------------------------------------


class _Service:
    """Answers searches from a script, records every call: a search shows the target only when the
    modifier is in a phrasing listed in ``finds``."""

    def __init__(self, ids: dict[str, int], pilot: dict, finds: set[str]):
        self.ids, self.finds, self.k = ids, finds, 10
        self.searches: list[dict] = []
        self.verdicts: list[dict] = []
        self.queries = {q["id"]: q for q in pilot["queries"]}
        self.all_ids = sorted(ids.values())

    def post(self, path: str, body: dict) -> dict:
        if path == "/v1/feedback":
            self.verdicts.append(body)
            return {"ok": True}
        query_id = f"q{len(self.searches)}"
        text = body["text"]
        q = self.queries[_Edge.current]  # the pilot query whose photo the edge encoded last
        targets = [self.ids[n] for n in q["targets"]]
        fillers = [i for i in self.all_ids if i not in targets][: self.k]
        shown = fillers[:4] + targets[:1] + fillers[4:9] if _phrasing(q["kind"], text) in self.finds else fillers
        self.searches.append({"query_id": query_id, "text": text, "shown": shown, "pilot_id": q["id"]})
        return {"query_id": query_id, "results": [{"id": i} for i in shown]}


class _Edge:
    current = -1

    def payload(self, image, dtype="int8"):
        return b"tokens"


@pytest.fixture(scope="module")
def pilot_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("operators")
    world = ShapesConfig(train_images=8, caption_pairs=8, test_queries=40, distractors=20)
    return generate_pilot(out / "pilot", world, PilotConfig(queries=200, distractors=30))


def test_the_split_records_each_querys_near_misses(pilot_split):
    for q in load_pilot(pilot_split)["queries"]:
        assert q["near"] and not set(q["near"]) & set(q["targets"])


def test_realistic_pilot_over_a_scripted_service(pilot_split, monkeypatch):
    """Verdicts go only to what was shown; a miss searches once more in other words, and corrects only
    when the target shows up there; about 30 % are never judged."""
    pilot = load_pilot(pilot_split)
    ids = {p.relative_to(pilot_split).as_posix(): i for i, p in enumerate(sorted((pilot_split / "gallery").iterdir()))}
    # the service finds targets only in the plain (training) phrasings: first searches always miss
    finds = {t for ts in (p["train"] for p in PHRASES.values()) for t in ts}
    service = _Service(ids, pilot, finds)
    edge = _Edge()
    monkeypatch.setattr("PIL.Image.open", lambda path: _Image(path))
    stats = simulate_pilot(pilot_split, service, edge, ids, progress=False, log=lambda *_: None, operators=CAREFUL)

    n = len(pilot["queries"])
    assert stats["queries"] == n and stats["judged"] + stats["unjudged"] == n
    sd = math.sqrt(n * 0.3 * 0.7)
    assert abs(stats["unjudged"] - 0.3 * n) < 4 * sd
    shown = {s["query_id"]: s for s in service.searches}
    for v in service.verdicts:
        s = shown[v["query_id"]]
        item = v.get("candidate_id", v.get("correct_id"))
        if v["verdict"] in ("confirmed", "rejected"):
            assert item in s["shown"]  # judged only what was shown
    # every first search missed; each judged query searched again, with other words
    firsts = [s for s in service.searches if s["text"] == stats["texts"][s["pilot_id"]]]
    assert stats["confirmed"] == 0 and stats["searched_again"] == stats["judged"]
    assert len(service.searches) == n + stats["searched_again"]
    corrected = [v for v in service.verdicts if v["verdict"] == "corrected"]
    assert len(corrected) == stats["corrected"] == stats["found_again"]
    first_ids = {s["query_id"] for s in firsts}
    for v in corrected:
        assert v["query_id"] in first_ids
        pilot_id = shown[v["query_id"]]["pilot_id"]
        assert v["correct_id"] in {ids[t] for t in service.queries[pilot_id]["targets"]}
    assert stats["rejected_only"] == stats["judged"] - stats["corrected"]
    # every verdict says how long the operator took; a correction comes after a second search, so
    # it took longer than that search's own verdict plus typing the change again
    assert all(v["verdict_s"] > 0 for v in service.verdicts)
    again = {s["pilot_id"]: s["query_id"] for s in service.searches if s["text"] != stats["texts"][s["pilot_id"]]}
    second_s = {v["query_id"]: v["verdict_s"] for v in service.verdicts}
    for v in corrected:
        assert v["verdict_s"] > second_s[again[shown[v["query_id"]]["pilot_id"]]] + CAREFUL.seconds_retype
    assert stats["operator_s_per_judged"] > CAREFUL.seconds_retype
    # the plain phrasings have a second wording for some edits only: some misses stay misses
    assert 0 < stats["corrected"] < stats["judged"]


class _Image:
    def __init__(self, path):
        _Edge.current = int(path.stem)  # references/000012.png is pilot query 12

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def convert(self, mode):
        return self


def _phrasing(kind: str, text: str) -> str:
    return parse_any(kind, text)[1]


def _example(kind: str) -> str:
    value = {
        "colour": "blue",
        "shape": "star",
        "size": "large",
        "move": "top",
        "add": "red circle",
        "remove": "red circle",
    }
    return PHRASES[kind]["test"][0].format(value=value[kind], comparative="bigger")


def test_the_experiments_page_states_every_operator_default():
    """Each operator option's default on the experiments page is the one the bench uses."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "experiments" / "feedback-learning.md").read_text()
    rows = {
        re.match(r"\| `(--[\w-]+)`", r).group(1): r.rsplit(" | ", 1)[1].strip(" |`")
        for r in page.splitlines()
        if r.startswith("| `--")
    }
    defaults = OperatorConfig()
    assert rows["--operators"] == defaults.kind
    assert int(rows["--operator-count"]) == defaults.count
    for option, field in (("--habit", "habit"), ("--unjudged", "unjudged")):
        assert float(rows[option]) == getattr(defaults, field)
    assert (
        float(rows["--wrong-confirm"]) == defaults.wrong_confirm
        and float(rows["--wrong-reject"]) == defaults.wrong_reject
    )
    assert (rows["--search-again"] == "on") == defaults.search_again


def test_operators_named_on_the_command_line():
    assert OperatorConfig.of("oracle", seed=3, habit=0.5) == OperatorConfig.oracle(3)  # the oracle has no knobs
    people = OperatorConfig.of("realistic", seed=2, habit=0.5, unjudged=0.1)
    assert (people.kind, people.seed, people.habit, people.unjudged) == ("realistic", 2, 0.5, 0.1)
    with pytest.raises(ConfigError, match="--operators must be one of"):
        OperatorConfig.of("psychic")
    with pytest.raises(ConfigError, match="--unjudged"):
        OperatorConfig.of("realistic", unjudged=1.0)


def test_an_operators_time_grows_with_the_candidates_looked_at():
    from isacir_lab.shapes.operators import Decision, seconds_to_verdict

    config = OperatorConfig()
    shown = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    # by hand: 4 s to read, 1.5 s per candidate up to the one confirmed (the third), times the noise
    factor = random.Random(1).lognormvariate(0.0, 0.3)
    assert seconds_to_verdict(shown, Decision(confirm=7), config, random.Random(1)) == round((4 + 3 * 1.5) * factor, 2)
    assert seconds_to_verdict(shown, Decision(reject=[5, 6, 7]), config, random.Random(1)) == round(19 * factor, 2)
    times = [seconds_to_verdict(shown, Decision(confirm=5), config, random.Random(s)) for s in range(2000)]
    assert 5.5 * 0.9 < sorted(times)[1000] < 5.5 * 1.1  # the median is the base time
    with pytest.raises(ConfigError, match="seconds_retype"):
        OperatorConfig(seconds_retype=-1).check()
