import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2f_search import Phase, Schedule, ScheduleError, parse_schedule
from c2f_search.compress import list_methods

METHODS = list_methods()
COMPRESSING = list_methods(compressing_only=True)

epochs = st.one_of(st.integers(1, 50).map(float), st.floats(0.01, 100, allow_nan=False, allow_infinity=False))


@st.composite
def schedules(draw):
    method = draw(st.sampled_from(METHODS))
    if method == "none":
        Cs = [1]
    else:
        coarse = draw(st.lists(st.integers(2, 16), max_size=3, unique=True))
        Cs = sorted(coarse, reverse=True) + [1]
    return Schedule(method, tuple(Phase(c, draw(epochs)) for c in Cs))


@st.composite
def mixed_schedules(draw):
    """Any coarse phase may name its own method; the final phase continues the last one."""
    coarse = sorted(draw(st.lists(st.integers(2, 16), min_size=1, max_size=4, unique=True)), reverse=True)
    phases = [Phase(c, draw(st.one_of(epochs, st.none())), draw(st.sampled_from(COMPRESSING))) for c in coarse]
    if draw(st.booleans()):  # Table 1's coarse-only ablation; its last phase has a length
        last = Phase(phases[-1].C, draw(epochs), phases[-1].method)
        return Schedule(phases[0].method, (*phases[:-1], last), coarse_only=True)
    return Schedule(phases[0].method, (*phases, Phase(1, draw(epochs))))


@settings(deadline=None)  # no timing assertion: a shared machine stalls a single example now and then
@given(st.one_of(schedules(), mixed_schedules()))
def test_text_form_round_trips(s):
    assert parse_schedule(str(s)) == s
    assert str(parse_schedule(str(s))) == str(s)


@given(st.text(max_size=30))
def test_parser_raises_only_schedule_error(text):
    try:
        s = parse_schedule(text)
    except ScheduleError as e:
        assert "e.g." in str(e) or "none:1x20" in str(e)
    else:
        assert s.phases[-1].C == 1


@pytest.mark.parametrize(
    "text, words",
    [
        ("fsift:4x5,1x15", "unknown method"),
        ("fshift:2x5,4x5,1x10", "strictly decrease"),
        ("fshift:4x5,2x15", "last phase must have C=1"),
        ("fshift:4x0,1x15", "epochs must be a finite number > 0"),
        ("fshift:4x-2,1x15", "epochs must be a finite number > 0"),
        ("fshift:2xnan,1x1", "epochs 'nan' is not a number"),
        ("avgpool:2x5", "coarse-only"),
        ("avgpool:2x5,1x5,coarse-only", "never reach C=1"),
        ("fshift:4,1x15", "missing the 'x'"),
        ("fshift", "METHOD:CxEPOCHS"),
        ("none:2x5,1x5", "baseline"),
        ("avgpool:4x2,tpachout:2x2,1x6", "phase 2 ('tpachout:2x2'): unknown method"),
        ("avgpool:4x2,none:2x2,1x6", "phase 2 ('none:2x2'): 'none' is the baseline"),
        ("avgpool:4x2,tpatchout:1x6", "phase 2 ('tpatchout:1x6'): C=1 is full resolution for every method"),
        ("avgpool:4x2,:2x2,1x6", "phase 2 (':2x2')"),
        ("avgpool:2x2,tpatchout:4x2,1x6", "strictly decrease"),
    ],
)
def test_bad_specs_say_what_is_wrong_with_an_example(text, words):
    with pytest.raises(ScheduleError) as e:
        parse_schedule(text)
    assert words in str(e.value)


def test_C_must_divide_the_token_grid():
    s = parse_schedule("avgpool:8x1,1x1")
    s.check_grid(16)
    with pytest.raises(ScheduleError, match="does not divide the 12 time tokens"):
        s.check_grid(12)


def test_fractional_epochs_become_whole_steps():
    s = parse_schedule("fshift:4x0.5,2x0.25,1x1.25")
    assert s.phase_steps(10) == [5, 3, 12]  # bounds at round(5), round(7.5), 20
    assert sum(s.phase_steps(10)) == 20
    assert all(n >= 1 for n in parse_schedule("fshift:4x0.01,1x1").phase_steps(3))


def test_mixed_schedule_names_each_phases_method_and_prints_a_prefix_only_where_it_changes():
    s = parse_schedule("avgpool:4x2,tpatchout:2x2,1x6")
    assert [(p.C, p.epochs, p.method) for p in s.phases] == [
        (4, 2, "avgpool"),
        (2, 2, "tpatchout"),
        (1, 6, "tpatchout"),
    ]
    assert s.method == "avgpool" and s.methods == ["avgpool", "tpatchout"] and s.label == "avgpool+tpatchout"
    assert s.method_at(2) == "tpatchout" and s.grid_Cs == [4]
    assert str(s) == "avgpool:4x2,tpatchout:2x2,1x6"
    assert str(parse_schedule("avgpool:4x2,avgpool:2x2,1x6")) == "avgpool:4x2,2x2,1x6"  # no change, no prefix
    assert (
        parse_schedule("fshift:4x5,1x15").label == "fshift"
        and str(parse_schedule("fshift:4x5,1x15")) == "fshift:4x5,1x15"
    )
    with pytest.raises(ScheduleError, match="has no phase at C=8"):
        s.method_at(8)


def test_trained_schedule_writes_each_phases_method():
    from c2f_search.schedule import trained_schedule

    phases = [{"C": 4, "method": "avgpool", "steps": 10}, {"C": 2, "method": "tpatchout", "steps": 5}]
    assert trained_schedule(phases, 10) == "avgpool:4x1,tpatchout:2x0.5,coarse-only"
    assert (
        trained_schedule(phases + [{"C": 1, "method": "tpatchout", "steps": 20}], 10)
        == "avgpool:4x1,tpatchout:2x0.5,1x2"
    )
    # a learned run that skipped tpatchout's C=2: its C=1 phase, the same for every method, continues avgpool
    assert (
        trained_schedule(
            [phases[0], {"C": 2, "method": "tpatchout", "steps": 0}, {"C": 1, "method": "tpatchout", "steps": 20}], 10
        )
        == "avgpool:4x1,1x2"
    )
