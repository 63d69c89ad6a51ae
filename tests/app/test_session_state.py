"""The session keys at run time: a reload brings back every key declared to persist and nothing else, and the
pages put no undeclared key in session state (app_pages/parts/session_keys.py)."""
from __future__ import annotations

from app_pages.parts import session_keys as keys
from core.settings.specs import SPECS

# One key of each family that persists, every one the Experiments page draws for MODEL_SETTING.
FAMILY_SAMPLES = {
    keys.MODEL_SETTING.prefix: [keys.MODEL_SETTING.key(s.key, name) for s in SPECS.values()
                                for name in keys.MODEL_SETTINGS],
    keys.PRED_METHOD.prefix: [keys.PRED_METHOD.key(0), keys.PRED_METHOD.key(3)],
}


def _persisting() -> list[str]:
    assert {f.prefix for f in keys.FAMILIES if f.persists} == set(FAMILY_SAMPLES), \
        "a new family that persists needs sample keys here"
    return [k.name for k in keys.KEYS.values() if k.persists] + [n for ns in FAMILY_SAMPLES.values() for n in ns]


def _user_keys(at) -> set:
    """The keys the Lab's code chose: not Streamlit's own (a keyless form's submit button is FormSubmitter:...)."""
    return {k for k in at.session_state if isinstance(k, str) and not k.startswith(("$$", "FormSubmitter:"))}


def test_a_reload_brings_back_every_key_declared_to_persist_and_nothing_else(open_page):
    from core.settings.choices import load_choices, new_token, save_choices

    token = new_token()
    saved = {name: f"saved {name}" for name in _persisting()}
    saved[keys.LAB_SOURCE] = "tfds:beans"  # the sidebar describes it
    saved[keys.LAB_ISSUED_AT] = 1_700_000_000
    kept_elsewhere = {keys.ROOM_NAME: "Ada", keys.LAB_TOKEN: "f" * 32, keys.OWN_CLASS: "cats", "not_a_key": 1}
    save_choices(token, saved | kept_elsewhere)

    at = open_page("home", query={"s": token})
    assert not at.exception
    missing = [name for name, value in saved.items() if at.session_state[name] != value]
    assert missing == [], f"saved but not restored: {missing}"
    assert at.session_state[keys.LAB_TOKEN] == token  # the address's key, not the one in the file
    assert not {keys.ROOM_NAME, keys.OWN_CLASS, "not_a_key"} & _user_keys(at)
    assert load_choices(token) == saved  # written back as it came: the same keys persist


def test_the_pages_keep_only_declared_keys_in_session_state(open_page):
    """The source scan (tests/unit/test_session_keys.py) cannot follow a key through a variable; a run can."""
    at = open_page("home")
    seen = _user_keys(at)
    for page in ("dataset", "own_classes", "data_efficiency", "predict", "room"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, page
        seen |= _user_keys(at)
    assert {keys.LAB_TOKEN, keys.DS_CHOICE, keys.OWN_NEW_NAME, keys.ROOM_NAME} <= seen  # every page ran
    assert sorted(k for k in seen if keys.declared(k) is None) == []
