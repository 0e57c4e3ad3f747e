"""Fuzzing the lmpo command: every mistake a user can make ends with exit code 2 and exactly one line
``lmpo: error: ...`` on stderr, never a traceback, and leaves no partial run behind.

1. overrides drawn by Hypothesis over every key of the config (and of a text environment's ``env.kwargs``):
   wrong types, non-finite numbers, numbers out of range, unknown keys, bad run names (checked on
   ``load_config``: it returns a config or raises a one-line ``ConfigError``, nothing else); then a table of
   the same mistakes through the command line;
2. settings that are each valid but do not go together (a cross-field check at validation);
3. files: the config file, a chatbot's dialogues (``env.kwargs.jsonl``) and a support desk's knowledge base
   (``env.kwargs.knowledge_base`` and its ``.templates.yaml``): missing, a directory, unreadable, not UTF-8,
   malformed, of the wrong shape; the line names the file and, where there is one, the line;
4. damaged run directories (a copy of a tiny trained run each): ``lmpo eval``, ``lmpo plot`` and
   ``lmpo train --resume``; the readers leave the run as they found it, a writer's temporary files included;
5. a ``train.runs_dir`` that cannot be written or is a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import traceback
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import torch
import yaml
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import lmpo.cli
from lmpo.config import Config, ConfigError, load_config
from lmpo.envs.text import registered_text_envs
from tests.conftest import TINY_TEXT

CONFIGS = Path(__file__).resolve().parents[1] / "lmpo" / "configs"
CARTPOLE = str(CONFIGS / "cartpole-ppo.yaml")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None)

# a control run of well under a second, for the command-line cases that might get as far as training
TINY_CONTROL = ["train.total_steps=64", "env.num_envs=1", "rollout.steps_per_env=64", "policy.hidden_sizes=[8]",
                "train.eval_every=0", "train.eval_episodes=1", "train.progress=false"]
TINY_SUPPORT = ["env.kwargs.products=40", "env.kwargs.orders=40", "env.kwargs.transcripts=60",
                "env.kwargs.train_goals=10", "env.kwargs.eval_goals=4", "policy.n_layer=1", "policy.d_model=32",
                "text.vocab_size=400", "text.pretrain.epochs=1", "text.sampling.max_new_tokens=12",
                "train.total_steps=16", "train.progress=false"]


# ------------------------------------------------------------------------------------------ helpers
@dataclass
class Outcome:
    """What one ``lmpo`` command did: its exit code (None: ``main`` raised) and what it printed."""

    code: int | None
    out: str
    err: str  # stderr, and the traceback when main raised
    raised: str = ""  # the exception out of main: its type and the first line of its message

    @property
    def lines(self) -> list[str]:
        """The non-empty lines of stderr (split where a terminal starts a new line)."""
        return [ln for ln in re.split(r"\r\n|\r|\n", self.err) if ln.strip()]

    def __str__(self) -> str:
        lines = self.lines or ["(stderr empty)"]
        said = f"exit {self.code}; stderr first: {lines[0][:300]!r}; last: {lines[-1][:300]!r}"
        return f"{said}; raised {self.raised}" if self.raised else said


def lmpo_main(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    """``lmpo ARGV`` in this process (an exception out of ``main`` is what a user would see as a traceback)."""
    capsys.readouterr()
    tb = raised = ""
    try:
        code: int | None = lmpo.cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    except Exception as e:
        code, tb = None, traceback.format_exc()
        raised = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err + tb, raised)


def lmpo_limited(*argv: str, timeout: float = 20, memory: int = 6 * 2**30) -> Outcome:
    """``lmpo ARGV`` in a subprocess with ``memory`` bytes of address space and ``timeout`` seconds: for settings
    that would take the test's own process down (a layer of 10**9 units, ten million environments)."""
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory})); "
            "from lmpo.cli import main; sys.exit(main(sys.argv[1:]))")
    try:
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        return Outcome(None, out, err + f"\n(no answer within {timeout:g} s: killed)")
    return Outcome(done.returncode, done.stdout, done.stderr)


def one_line_problem(o: Outcome, *names: str) -> str | None:
    """Why ``o`` is not exit 2 with one ``lmpo: error:`` line naming each of ``names`` (None when it is)."""
    lines = o.lines
    if o.code != 2 or len(lines) != 1 or not lines[0].startswith("lmpo: error:") or "Traceback" in o.err:
        return f"expected exit 2 and one line 'lmpo: error: ...', got {o}"
    missing = [n for n in names if n not in lines[0]]
    if missing:
        return f"the line does not name {missing}: {lines[0]!r}"
    return None


def assert_user_error(o: Outcome, *names: str) -> None:
    """Exit 2, one non-empty stderr line starting ``lmpo: error:`` that names each of ``names``, no traceback."""
    problem = one_line_problem(o, *names)
    assert problem is None, problem


def files_under(root: Path) -> set[Path]:
    """Every file (not directory) below ``root``."""
    return {p for p in root.rglob("*") if not p.is_dir()} if root.is_dir() else set()


def assert_no_partial_run(root: Path, before: set[Path]) -> None:
    """No file appeared below ``root`` (an empty run directory is tolerated, a run with files in it is not)."""
    new = sorted(str(p.relative_to(root)) for p in files_under(root) - before)
    assert not new, f"a failed command left files behind: {new[:8]}"


def config_error_message(base: Path | None, overrides: list[str]) -> str | None:
    """The one-line ``ConfigError`` of ``load_config(base, overrides)``, or None when it validates; any other
    exception fails the test (the command would show it as a traceback)."""
    try:
        load_config(base, overrides)
    except ConfigError as e:
        message = str(e)
        assert message.strip(), "an empty ConfigError"
        assert "\n" not in message and "\r" not in message, f"a ConfigError of more than one line: {message!r}"
        return message
    except Exception as e:  # noqa: BLE001  (the point: nothing but ConfigError may come out)
        raise AssertionError(f"load_config raised {type(e).__name__} (not ConfigError): {e}"[:600]) from e
    return None


# --------------------------------------------------------------------------- the config's own keys
@dataclass(frozen=True)
class Leaf:
    """One setting: its dotted key, the kind of value it takes, and its declared bounds."""

    key: str
    kind: str  # int, float, bool, str, list, float_list, dict, float_dict, literal, other
    nullable: bool
    bounds: tuple[Any, ...] = ()  # annotated_types Ge / Gt / Le / Lt

    @property
    def name(self) -> str:
        """The last part of the key (what an error line names)."""
        return self.key.rsplit(".", 1)[-1]


def _members(annotation: Any) -> list[Any]:
    """The types a field accepts: Annotated unwrapped, unions flattened."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _members(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in get_args(annotation) for m in _members(a)]
    return [annotation]


def _kind(t: Any) -> str:
    origin = get_origin(t)
    if origin is Literal:
        return "literal"
    if origin is list:
        return "float_list" if get_args(t) == (float,) else "list"
    if origin is dict:
        return "float_dict" if get_args(t)[1:] == (float,) else "dict"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(t, "other")


def leaves(model: type[BaseModel], prefix: str = "") -> dict[str, Leaf]:
    """Every setting of ``model`` by dotted key; sections (and the algorithms' union) recursed into."""
    out: dict[str, Leaf] = {}
    for name, f in model.model_fields.items():
        members = _members(f.annotation)
        sections = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if sections:
            for section in sections:
                for key, leaf in leaves(section, f"{prefix}{name}.").items():
                    out.setdefault(key, leaf)
            continue
        values = [m for m in members if m is not type(None)]
        kind = _kind(values[0]) if len(values) == 1 else "other"
        bounds = tuple(m for m in f.metadata if isinstance(m, Ge | Gt | Le | Lt))
        out[prefix + name] = Leaf(prefix + name, kind, type(None) in members, bounds)
    return out


CONFIG_LEAVES = leaves(Config)
TEXT_ENV_LEAVES = {env_id: leaves(family.Settings, "env.kwargs.") for env_id, family in registered_text_envs().items()}
BASES: dict[str, tuple[Path | None, str]] = {  # recipe -> (file, env id)
    "defaults": (None, "CartPole-v1"),
    "cartpole-ppo": (CONFIGS / "cartpole-ppo.yaml", "CartPole-v1"),
    "pendulum-ppo": (CONFIGS / "pendulum-ppo.yaml", "Pendulum-v1"),
    "chatbot": (CONFIGS / "chatbot.yaml", "lmpo/Chatbot-v0"),
    "support": (CONFIGS / "support.yaml", "lmpo/Support-v0"),
}


def leaves_of(base: str) -> list[Leaf]:
    """The settings that apply to a recipe: the text section and env.kwargs' own keys only for text envs."""
    env_id = BASES[base][1]
    own = [leaf for key, leaf in CONFIG_LEAVES.items() if env_id in TEXT_ENV_LEAVES or not key.startswith("text.")]
    return own + list(TEXT_ENV_LEAVES.get(env_id, {}).values())


def sections_of(base: str) -> list[str]:
    """The sections of a recipe's config (``""``: the top level)."""
    return sorted({leaf.key.rpartition(".")[0] for leaf in leaves_of(base)})


# values of the wrong type for each kind of setting (YAML, as typed on the command line)
WRONG_TYPE = {
    "int": ["abc", "[1, 2]", "{a: 1}", "1.5", ".inf", ".nan"],
    "float": ["abc", "[1.0]", "{a: 1}", "'fast'"],
    "bool": ["abc", "[true]", "{a: 1}", "2", "0.5"],
    "str": ["[a, b]", "{a: 1}"],
    "list": ["abc", "5", "{a: 1}"],
    "float_list": ["abc", "5", "{a: 1}", "[a, b, c]"],
    "dict": ["abc", "5", "[1, 2]"],
    "float_dict": ["abc", "5", "[1, 2]", "{memory: lots}"],
    "literal": ["not-a-choice", "5", "[x]", "{a: 1}"],
}
NON_FINITE = [".inf", "-.inf", ".nan", ".NaN", "-.Inf", "1.0e999", "-1.0e999"]
# anything a hand may type: wrong types, extreme numbers, YAML oddities, paths
ODD_VALUES = ["", "null", "~", "true", "no", "0", "-1", "1e-300", "10000000", "1000000000", "-1000000000",
              str(2**63), str(-(2**64)), "1.5", ".inf", "-.inf", ".nan", "[]", "{}", "[0]", "[1000000000]", "[-1]",
              "[.nan]", "{a: 1}", "{a: {b: [1, {c: .inf}]}}", "abc", "'.'", "..", "../x", "a/b", "/", "[a, [b, [c]]]",
              "&a [*a]", "*undefined", "!!python/object:os.system", "!!binary aGVsbG8=", "2024-01-01", "0x1F", "0o17",
              "'1'", "\"\\u0000\"", "é", "CartPole-v99", "lmpo/Support-v0", "FrozenLake-v1", "ppo", "trpo", "hf",
              "transformer", "gru", "bf16", "cuda:7", "auto"]

identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
odd_values = st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=12), st.integers().map(str),
                       st.floats().map(repr))


@st.composite
def any_overrides(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A recipe and one to four overrides: known keys, sections, unknown keys, or any text, with odd values."""
    base = draw(st.sampled_from(sorted(BASES)))
    known = [leaf.key for leaf in leaves_of(base)] + [s for s in sections_of(base) if s]
    key = st.one_of(st.sampled_from(known),
                    st.builds(lambda s, k: f"{s}.{k}" if s else k, st.sampled_from(sections_of(base)), identifiers),
                    st.text(max_size=12))
    items = draw(st.lists(st.builds(lambda k, v: f"{k}={v}", key, odd_values), min_size=1, max_size=4))
    return base, items


@st.composite
def wrong_types(draw: st.DrawFn) -> tuple[str, str, Leaf]:
    """A recipe, a setting of it, and a value of the wrong type for that setting."""
    base = draw(st.sampled_from(sorted(BASES)))
    leaf = draw(st.sampled_from([leaf for leaf in leaves_of(base) if leaf.kind in WRONG_TYPE]))
    return base, f"{leaf.key}={draw(st.sampled_from(WRONG_TYPE[leaf.kind]))}", leaf


@st.composite
def non_finite(draw: st.DrawFn) -> tuple[str, str, Leaf]:
    """A recipe, a numeric setting of it (a number, a list or a mapping of numbers), and inf or NaN in it."""
    base = draw(st.sampled_from(sorted(BASES)))
    numeric = ("int", "float", "float_list", "float_dict")
    leaf = draw(st.sampled_from([leaf for leaf in leaves_of(base) if leaf.kind in numeric]))
    v = draw(st.sampled_from(NON_FINITE))
    value = {"float_list": f"[{v}, 1, 1]", "float_dict": f"{{memory: {v}}}"}.get(leaf.kind, v)
    return base, f"{leaf.key}={value}", leaf


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[str, str, Leaf]:
    """A recipe, a bounded number of it, and a value past one of its declared bounds."""
    base = draw(st.sampled_from(sorted(BASES)))
    leaf = draw(st.sampled_from([leaf for leaf in leaves_of(base) if leaf.bounds and leaf.kind in ("int", "float")]))
    bound = draw(st.sampled_from(leaf.bounds))
    if leaf.kind == "int":
        step: Any = draw(st.sampled_from([1, 2, 10, 1000, 10**9, 2**63]))
    else:
        step = draw(st.sampled_from([1e-9, 0.001, 0.5, 1.0, 1e6]))
    if isinstance(bound, Ge):
        value = bound.ge - step
    elif isinstance(bound, Gt):
        value = bound.gt - draw(st.sampled_from([0, step]))
    elif isinstance(bound, Le):
        value = bound.le + step
    else:
        assert isinstance(bound, Lt)
        value = bound.lt + draw(st.sampled_from([0, step]))
    return base, f"{leaf.key}={value!r}", leaf


@st.composite
def unknown_keys(draw: st.DrawFn) -> tuple[str, str, str]:
    """A recipe and a key that none of its sections has (env.kwargs: only where the environment validates it)."""
    base = draw(st.sampled_from(sorted(BASES)))
    section = draw(st.sampled_from(sections_of(base)))
    taken = {leaf.name for leaf in leaves_of(base) if leaf.key.rpartition(".")[0] == section} | set(sections_of(base))
    name = draw(identifiers.filter(lambda n: n not in taken and n.split(".")[0] not in taken))
    return base, f"{section}.{name}=1" if section else f"{name}=1", name


separators = st.sampled_from(["/", "/../", "/./"])
bad_names = st.one_of(
    st.sampled_from([".", "..", "", "../x", "a/b", "/abs", "a/../b", "./a", "a/", "../../etc", "x\x00y"]),
    st.builds(lambda a, s, b: f"{a}{s}{b}", identifiers, separators, identifiers),
    st.builds(lambda n: "../" * n + "escape", st.integers(1, 5)),
)


# -------------------------------------------------------------------------- 1. overrides, fuzzed
@FUZZ
@given(any_overrides())
def test_any_override_validates_or_is_one_config_error(drawn: tuple[str, list[str]]) -> None:
    base, overrides = drawn
    config_error_message(BASES[base][0], overrides)


@settings(FUZZ, max_examples=100)
@given(st.one_of(wrong_types(), non_finite(), out_of_range()))
def test_a_bad_value_is_a_config_error_naming_the_key(drawn: tuple[str, str, Leaf]) -> None:
    """A value of the wrong type, a number that is not finite, or one out of range."""
    base, override, leaf = drawn
    message = config_error_message(BASES[base][0], [override])
    assert message is not None, f"{override} accepted on {base}"
    assert leaf.key in message, message  # the whole dotted key: a short name ("id") is in any message


@FUZZ
@given(unknown_keys())
def test_an_unknown_key_is_a_config_error_naming_it(drawn: tuple[str, str, str]) -> None:
    base, override, name = drawn
    message = config_error_message(BASES[base][0], [override])
    assert message is not None, f"{override} accepted on {base}"
    assert name in message, message


@FUZZ
@given(st.sampled_from(sorted(BASES)), bad_names)
def test_a_run_name_that_is_not_one_plain_directory_name_is_a_config_error(base: str, name: str) -> None:
    message = config_error_message(BASES[base][0], [f"name={json.dumps(name)}"])
    assert message is not None, f"name={name!r} accepted on {base}"
    assert "name" in message, message


def test_an_algorithm_setting_without_the_algorithm_name_keeps_the_default_algorithm() -> None:
    """A config without an ``algo`` section runs PPO; ``algo.lr=...`` on it changes PPO's learning rate."""
    assert config_error_message(None, ["algo.lr=0.001"]) is None
    cfg = load_config(None, ["algo.lr=0.001", "algo.advantage.gamma=0.9"])
    assert (cfg.algo.name, cfg.algo.lr, cfg.algo.advantage.gamma) == ("ppo", 0.001, 0.9)


CLI_OVERRIDES = [
    "algo.lr=abc", "algo.lrr=0.1", "algo=ppo", "env=5", "policy.hidden_sizes=8", "policy.hidden_sizes=[0]",
    "policy.hidden_sizes=[-8]", "policy.hidden_sizes.0=8", "env.num_envs=0", "train.total_steps=-1", "seed=-1",
    "seed=abc", "seed=[1]", "algo.adam_eps=.inf", "algo.vf_coef=-.inf", "algo.clip_range=.nan",
    "policy.log_std_init=.nan", "train.progress=maybe", "text.vocab_size=300", "name=.", "name=..", "name=../x",
    "name=a/b", "name=", "=5", "algo..lr=1", "noequals", "seed\n=1", "algo.lr\r=1",
    # found by an adversarial session: a bool for a number, past float32, a device lmpo does not train on, values
    # YAML cannot read (5,000 digits, brackets 2,000 deep), an environment whose extra is not installed
    "algo.lr=true", "env.num_envs=false", "algo.vf_coef=1e300", "train.device=meta", "seed=" + "9" * 5000,
    "seed=" + "[" * 2000, "env.id=GymV26Environment-v0",
]


@pytest.mark.parametrize("override", CLI_OVERRIDES)
def test_a_bad_override_on_the_command_line(override: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    before = files_under(tmp_path)
    o = lmpo_main(capsys, "train", CARTPOLE, f"train.runs_dir={tmp_path / 'runs'}", *TINY_CONTROL, override)
    assert_user_error(o)
    assert_no_partial_run(tmp_path, before)


@pytest.mark.parametrize("override", ["policy.hidden_sizes=[1000000000]", "env.num_envs=10000000"])
def test_a_huge_setting_is_one_line_not_a_crash_or_a_hang(override: str, tmp_path: Path) -> None:
    before = files_under(tmp_path)
    o = lmpo_limited("train", CARTPOLE, f"train.runs_dir={tmp_path / 'runs'}", *TINY_CONTROL, override)
    assert_user_error(o)
    assert_no_partial_run(tmp_path, before)


def test_an_override_that_validates_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The other side: a tiny run with odd but valid settings trains (exit 0, nothing on stderr)."""
    o = lmpo_main(capsys, "train", CARTPOLE, f"train.runs_dir={tmp_path}", *TINY_CONTROL, "seed=2147483647",
                  "algo.target_kl=null", "algo.ent_coef=-0.01", "name=a.b-c_9")
    assert o.code == 0 and not o.lines, str(o)
    assert (tmp_path / "a.b-c_9" / "config.yaml").is_file()


# ------------------------------------------------------------------------- 2. cross-field settings
CROSS_FIELD = {  # id: (recipe, overrides, any of these words names the problem)
    "min_new_tokens above max_new_tokens": (
        "chatbot", ["text.sampling.min_new_tokens=10", "text.sampling.max_new_tokens=5"], ["min_new_tokens"]),
    "transformer d_model not divisible by n_head": (
        "chatbot", ["policy.kind=transformer", "policy.d_model=30", "policy.n_head=4"], ["d_model", "n_head"]),
    "hidden layer of 0 units": ("cartpole-ppo", ["policy.hidden_sizes=[0]"], ["hidden_sizes"]),
    "hidden layer of -8 units": ("cartpole-ppo", ["policy.hidden_sizes=[-8]"], ["hidden_sizes"]),
    "adam_eps infinite": ("cartpole-ppo", ["algo.adam_eps=.inf"], ["adam_eps"]),
    "seed negative": ("cartpole-ppo", ["seed=-1"], ["seed"]),
    "env kwargs CartPole does not take": ("cartpole-ppo", ["env.kwargs.foo=1"], ["foo"]),
    "FrozenLake (discrete observations) with an MLP": ("cartpole-ppo", ["env.id=FrozenLake-v1"], ["FrozenLake"]),
    "Pendulum log_std_init NaN": ("pendulum-ppo", ["policy.log_std_init=.nan"], ["log_std_init"]),
    "vf_coef infinite": ("cartpole-ppo", ["algo.vf_coef=.inf"], ["vf_coef"]),
    "chatbot user thresholds inverted": (
        "chatbot", ["env.kwargs.satisfied_at=0.3", "env.kwargs.neutral_at=0.6"], ["neutral_at", "satisfied_at"]),
    "support entity_split negative share": (
        "support", ["env.kwargs.entity_split=[0.5, -0.25, 0.75]"], ["entity_split"]),
    "support entity_split all zero": ("support", ["env.kwargs.entity_split=[0, 0, 0]"], ["entity_split"]),
}


@pytest.mark.parametrize("case", list(CROSS_FIELD))
def test_settings_that_do_not_go_together_are_rejected_at_validation(case: str) -> None:
    base, overrides, words = CROSS_FIELD[case]
    message = config_error_message(BASES[base][0], overrides)
    assert message is not None, f"{overrides} accepted on {base}"
    assert any(w in message for w in words), f"the error names none of {words}: {message!r}"


# ------------------------------------------------------------------------------ 3. files: the config
CONFIG_FILES: dict[str, Callable[[Path], None] | None] = {  # id: how to make the file (None: no file)
    "missing": None,
    "a directory": lambda p: p.mkdir(),
    "not UTF-8": lambda p: p.write_bytes(b"name: x\nseed: \xff\xfe\x00\x81\n"),
    "malformed YAML": lambda p: p.write_text("env: {id: CartPole-v1\nalgo: [ppo\n"),
    "a list at the top level": lambda p: p.write_text("- env\n- algo\n"),
    "a string at the top level": lambda p: p.write_text("just some words\n"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_a_bad_config_file_is_one_line_naming_it(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "my-recipe.yaml"
    make = CONFIG_FILES[case]
    if make is not None:
        make(path)
    try:
        before = files_under(tmp_path)
        o = lmpo_main(capsys, "train", str(path), f"train.runs_dir={tmp_path / 'runs'}", *TINY_CONTROL)
        assert_user_error(o, path.name)
        assert_no_partial_run(tmp_path, before)
    finally:
        if path.exists():
            path.chmod(0o755)


def test_an_empty_config_file_means_the_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()
    o = lmpo_main(capsys, "train", str(path), f"train.runs_dir={tmp_path / 'runs'}", *TINY_CONTROL)
    assert o.code == 0 and not o.lines, str(o)


# -------------------------------------------------------------------------- 3. files: data files
GOOD_DIALOGUE = json.dumps({"messages": [{"role": "user", "content": "Hello"},
                                         {"role": "assistant", "content": "Hi there"}]})


def _lines(*lines: str | bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))


DIALOGUE_FILES: dict[str, tuple[Callable[[Path], None] | None, int | None]] = {  # id: (make it, the bad line)
    "missing": (None, None),
    "a directory": (lambda p: p.mkdir(), None),
    "not UTF-8": (_lines(GOOD_DIALOGUE, b'{"messages": [{"role": "user", "content": "caf\xe9 \xff"}]}'), 2),
    "malformed JSON": (_lines(GOOD_DIALOGUE, '{"messages": [', GOOD_DIALOGUE), 2),
    "a list, not an object": (_lines(GOOD_DIALOGUE, GOOD_DIALOGUE, '["user", "Hello"]'), 3),
    "messages not a list": (_lines(GOOD_DIALOGUE, '{"messages": "Hello"}'), 2),
    "unknown role": (_lines('{"messages": [{"role": "bot", "content": "x"}, {"role": "user", "content": "y"}]}'), 1),
    "content not a string": (_lines(GOOD_DIALOGUE, '{"messages": [{"role": "user", "content": 5}, '
                                                   '{"role": "assistant", "content": "x"}]}'), 2),
    "starts with the assistant": (_lines(GOOD_DIALOGUE, GOOD_DIALOGUE, '{"messages": [{"role": "assistant", '
                                         '"content": "x"}, {"role": "user", "content": "y"}]}'), 3),
    "no reply": (_lines(GOOD_DIALOGUE, '{"messages": [{"role": "user", "content": "Hello"}]}'), 2),
    "empty": (lambda p: p.write_text(""), None),
}


@pytest.mark.parametrize("case", list(DIALOGUE_FILES))
def test_a_bad_dialogue_file_is_one_line_naming_it_and_its_line(case: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "my-dialogues.jsonl"
    make, line = DIALOGUE_FILES[case]
    if make is not None:
        make(path)
    before = files_under(tmp_path)
    o = lmpo_main(capsys, "pretrain", "chatbot", *TINY_TEXT, f"env.kwargs.jsonl={path}",
                  f"train.runs_dir={tmp_path / 'runs'}", "name=data")
    assert_user_error(o, path.name, *([f"{path.name}:{line}"] if line else []))
    assert_no_partial_run(tmp_path, before)


KB_FILES: dict[str, tuple[str, Callable[[Path], None] | None, int | None, str | None]] = {
    # id: (file name, make it, the bad line, the file the line must name when not the knowledge base)
    "csv missing": ("kb.csv", None, None, None),
    "csv a directory": ("kb.csv", lambda p: p.mkdir(), None, None),
    "csv not UTF-8": ("kb.csv", _lines("name,price", "Lamp,$3", b"Caf\xe9 \xff Mug,$4"), 3, None),
    "csv without a name column": ("kb.csv", _lines("title,price", "Lamp,$3"), 1, None),
    "csv row without a name": ("kb.csv", _lines("name,price", "Lamp,$3", ",$4"), 3, None),
    "csv without entities": ("kb.csv", _lines("name,price"), None, None),
    "csv without attribute columns": ("kb.csv", _lines("name", "Lamp", "Mug"), None, None),
    "csv repeated names": ("kb.csv", _lines("name,price", "Lamp,$3", "Mug,$4", "lamp,$5"), None, None),
    "jsonl missing": ("kb.jsonl", None, None, None),
    "jsonl not UTF-8": ("kb.jsonl", _lines('{"name": "Lamp", "price": "$3"}', b'{"name": "Mug \xff", "price": 4}'),
                        2, None),
    "jsonl malformed": ("kb.jsonl", _lines('{"name": "Lamp", "price": "$3"}', '{"name": "Mug", '), 2, None),
    "jsonl a list, not an object": ("kb.jsonl", _lines('{"name": "Lamp", "price": "$3"}', '["Mug", 4]'), 2, None),
    "jsonl row without a name": ("kb.jsonl", _lines('{"name": "Lamp", "price": "$3"}', '{"name": "Mug"}',
                                                    '{"price": "$4"}'), 3, None),
    "templates malformed YAML": ("kb.csv", lambda p: (_lines("name,price", "Lamp,$3")(p), p.with_name(
        "kb.templates.yaml").write_text("questions: {price: [unclosed\n")), None, "kb.templates.yaml"),
    "templates not UTF-8": ("kb.csv", lambda p: (_lines("name,price", "Lamp,$3")(p), p.with_name(
        "kb.templates.yaml").write_bytes(b"answers: {price: \"\xff\"}\n")), None, "kb.templates.yaml"),
    "templates of the wrong shape": ("kb.csv", lambda p: (_lines("name,price", "Lamp,$3")(p), p.with_name(
        "kb.templates.yaml").write_text("- questions\n")), None, "kb.templates.yaml"),
    "templates for an unknown column": ("kb.csv", lambda p: (_lines("name,price", "Lamp,$3")(p), p.with_name(
        "kb.templates.yaml").write_text("answers: {colour: 'It is {value}.'}\n")), None, None),
    # found by an adversarial session: a field past csv's size limit, a template reaching into an attribute
    "csv field of 200,000 characters": ("kb.csv", _lines("name,price", "Lamp,$3", "Mug," + "9" * 200_000), 3, None),
    "template with an attribute lookup": ("kb.csv", lambda p: (_lines("name,price", "Lamp,$3")(p), p.with_name(
        "kb.templates.yaml").write_text("answers: {price: 'It is {value.foo}.'}\n")), None, None),
}


@pytest.mark.parametrize("case", list(KB_FILES))
def test_a_bad_knowledge_base_is_one_line_naming_it_and_its_line(case: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    name, make, line, named = KB_FILES[case]
    path = tmp_path / name
    if make is not None:
        make(path)
    before = files_under(tmp_path)
    o = lmpo_main(capsys, "pretrain", "support", *TINY_SUPPORT, f"env.kwargs.knowledge_base={path}",
                  f"train.runs_dir={tmp_path / 'runs'}", "name=data")
    names = [named or path.name, *([f"{path.name}:{line}"] if line else [])]
    assert_user_error(o, *names)
    assert_no_partial_run(tmp_path, before)


# ---------------------------------------------------------------------- 4. damaged run directories
@pytest.fixture(scope="module")
def control_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished CartPole PPO run: four updates, a checkpoint after each (the last two kept)."""
    runs = tmp_path_factory.mktemp("control-runs")
    assert lmpo.cli.main(["train", CARTPOLE, f"train.runs_dir={runs}", "name=tiny", "train.progress=false",
                          "train.total_steps=512", "env.num_envs=2", "rollout.steps_per_env=64",
                          "policy.hidden_sizes=[8]", "train.checkpoint_every=1", "train.eval_episodes=2"]) == 0
    return runs / "tiny"


def latest_dir(run: Path) -> Path:
    """The checkpoint ``checkpoints/latest`` names."""
    ckpts = run / "checkpoints"
    return ckpts / (ckpts / "latest").read_text().strip()


def newest_checkpoint(run: Path) -> str:
    """The name of the newest ``iter_*`` checkpoint."""
    return sorted(p.name for p in (run / "checkpoints").glob("iter_*"))[-1]


def truncate(path: Path) -> None:
    """Keep the first half of a file (what a full disk or a copy cut short leaves)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def edit_config(run: Path, section: str, key: str, value: Any) -> None:
    """Change one setting of a run's ``config.yaml``."""
    path = run / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg[section][key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def tear_metrics(run: Path) -> None:
    """A last line of ``metrics.jsonl`` cut half-way, as a crash while logging leaves it."""
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 5, "env_steps": 640, "charts/episode_ret')


OK, ERR, EITHER, NEWEST = "exit 0", "exit 2 with one line", "exit 0 or exit 2 with one line", "newest or one line"
DAMAGES: dict[str, tuple[str, Callable[[Path], Any], str, str, str | None]] = {
    # id: (run, damage, eval, plot, resume (None: not tried))
    "control intact": ("control", lambda run: None, OK, OK, OK),
    "control truncated policy.safetensors": ("control", lambda run: truncate(latest_dir(run) / "policy.safetensors"),
                                             ERR, EITHER, ERR),
    # readers need only the weights, and never unpickle state.pt; a resume does, and says it is damaged
    "control truncated state.pt": ("control", lambda run: truncate(latest_dir(run) / "state.pt"), OK, EITHER, ERR),
    "control latest names a missing checkpoint": (
        "control", lambda run: (run / "checkpoints" / "latest").write_text("iter_0009999"), ERR, EITHER, ERR),
    "control latest holds garbage": (
        "control", lambda run: (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00 garbage ../../\n"),
        ERR, EITHER, ERR),
    # a crash between a run's first checkpoint and its first `latest` leaves this: the newest complete checkpoint,
    # or one line; never a silent start from scratch
    "control latest deleted": ("control", lambda run: (run / "checkpoints" / "latest").unlink(), NEWEST, EITHER,
                               NEWEST),
    "control config.yaml missing": ("control", lambda run: (run / "config.yaml").unlink(), ERR, EITHER, ERR),
    "control config.yaml not YAML": (
        "control", lambda run: (run / "config.yaml").write_text("env: {id: CartPole-v1\npolicy: [\n"), ERR, EITHER,
        ERR),
    "control config.yaml does not match the weights": (
        "control", lambda run: edit_config(run, "policy", "hidden_sizes", [16, 16]), ERR, EITHER, ERR),
    "control metrics.jsonl torn last line": ("control", tear_metrics, OK, OK, OK),
    "text intact": ("text", lambda run: None, OK, EITHER, None),
    "text tokenizer missing": ("text", lambda run: shutil.rmtree(run / "tokenizer"), ERR, EITHER, ERR),
    "text truncated policy.safetensors": ("text", lambda run: truncate(latest_dir(run) / "policy.safetensors"),
                                          ERR, EITHER, ERR),
    "text config.yaml does not match the weights": ("text", lambda run: edit_config(run, "policy", "hidden", 32),
                                                    ERR, EITHER, ERR),
    # found by an adversarial session
    "control state.pt of another shape": (
        "control", lambda run: torch.save({"iteration": 1}, latest_dir(run) / "state.pt"), OK, EITHER, ERR),
    "control metrics.jsonl iteration is text": (
        "control", lambda run: (run / "metrics.jsonl").write_text('{"iteration": "y"}\n{"iteration": 1}\n'),
        OK, ERR, ERR),
    "control tb is a file": ("control", lambda run: (shutil.rmtree(run / "tb"), (run / "tb").write_text("x")),
                             OK, EITHER, ERR),
    "control metrics.jsonl is a directory": (
        "control", lambda run: ((run / "metrics.jsonl").unlink(), (run / "metrics.jsonl").mkdir()), OK, EITHER, ERR),
    "text tokenizer.json emptied": ("text", lambda run: (run / "tokenizer" / "tokenizer.json").write_text("{}"),
                                    ERR, EITHER, ERR),
}
WRITERS_TEMP = ".tmp-iter_0000099"  # a checkpoint a live writer is half-way through


@pytest.fixture
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, Path]:
    """``(case, the damaged copy, the pristine run)``: a copy of the case's run, damaged, with a writer's
    half-written checkpoint beside the real ones."""
    case = request.param
    pristine = request.getfixturevalue("control_run" if DAMAGES[case][0] == "control" else "text_run")
    copy = tmp_path / pristine.name
    shutil.copytree(pristine, copy)
    DAMAGES[case][1](copy)
    temp = copy / "checkpoints" / WRITERS_TEMP
    temp.mkdir(parents=True)
    (temp / "policy.safetensors").write_bytes(b"half-written")
    return case, copy, pristine


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every entry below ``root`` (and ``root``) with whether it is a directory, its size and mtime."""
    out = {}
    for p in [root, *root.rglob("*")]:
        s = p.lstat()
        out[str(p.relative_to(root))] = (stat.S_ISDIR(s.st_mode), s.st_size, s.st_mtime_ns)
    return out


def changes(before: dict[str, tuple[bool, int, int]], after: dict[str, tuple[bool, int, int]]) -> list[str]:
    """What a command changed in a directory: added, removed and modified entries."""
    added = [f"+{k}" for k in sorted(after.keys() - before.keys())]
    removed = [f"-{k}" for k in sorted(before.keys() - after.keys())]
    return added + removed + [f"~{k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]


def iteration_zero_records(run: Path) -> int:
    """How many records of ``metrics.jsonl`` are of iteration 0 (more than one: the run started over)."""
    count = 0
    for line in (run / "metrics.jsonl").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        count += isinstance(record, dict) and record.get("iteration") == 0
    return count


def outcome_problem(o: Outcome, expect: str, command: str, run: Path, newest: str) -> str | None:
    """Why ``o`` does not meet ``expect`` (None when it does)."""
    one_line = one_line_problem(o)
    if expect == ERR:
        return None if one_line is None else f"{command}: {one_line}"
    if o.code == 0:
        if o.lines and expect == OK:
            return f"{command}: exit 0 but stderr says {o.lines[0]!r}"
        if expect == NEWEST and command == "eval" and newest not in o.out:
            return f"{command}: exit 0 without naming the newest checkpoint {newest}: {o.out.strip()[:200]!r}"
        if command == "resume" and iteration_zero_records(run) != 1:
            return f"{command}: exit 0 but the run started over from iteration 0"
        return None
    if expect in (EITHER, NEWEST) and one_line is None:
        return None
    return f"{command}: expected {expect}, got {o}"


def _damage_params(command: str) -> list[Any]:
    return [pytest.param(case, id=case) for case, (_, _, *expects) in DAMAGES.items()
            if expects[("eval", "plot", "resume").index(command)] is not None]


@pytest.mark.parametrize("damaged", _damage_params("eval"), indirect=True)
def test_eval_of_a_damaged_run(damaged: tuple[str, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    case, run, pristine = damaged
    kind, _, expect, _, _ = DAMAGES[case]
    before = snapshot(run)
    o = lmpo_main(capsys, "eval", run, "--episodes" if kind == "control" else "--conversations", "2")
    problems = [outcome_problem(o, expect, "eval", run, newest_checkpoint(pristine))]
    changed = changes(before, snapshot(run))
    problems.append(f"eval changed the run: {changed[:6]}" if changed else None)
    problems.append(None if (run / "checkpoints" / WRITERS_TEMP).is_dir() else f"eval removed {WRITERS_TEMP}")
    assert not [p for p in problems if p], "; ".join(p for p in problems if p)


@pytest.mark.parametrize("damaged", _damage_params("plot"), indirect=True)
def test_plot_of_a_damaged_run(damaged: tuple[str, Path, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    case, run, pristine = damaged
    expect = DAMAGES[case][3]
    before = snapshot(run)
    png = tmp_path / "curves.png"  # outside the run: plotting into it would be a change
    o = lmpo_main(capsys, "plot", run, "-o", png)
    problems = [outcome_problem(o, expect, "plot", run, newest_checkpoint(pristine))]
    if o.code == 0 and not (png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"):
        problems.append("plot: exit 0 without a PNG")
    changed = changes(before, snapshot(run))
    problems.append(f"plot changed the run: {changed[:6]}" if changed else None)
    problems.append(None if (run / "checkpoints" / WRITERS_TEMP).is_dir() else f"plot removed {WRITERS_TEMP}")
    assert not [p for p in problems if p], "; ".join(p for p in problems if p)


RESUME_TINY = {"control": ["train.total_steps=768"],
               "text": ["train.total_steps=4", "text.conversations_per_update=2", "text.samples_per_prompt=2",
                        "text.eval_conversations=2", "text.eval_samples=1"]}


@pytest.mark.parametrize("damaged", _damage_params("resume"), indirect=True)
def test_resume_of_a_damaged_run(damaged: tuple[str, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    case, run, pristine = damaged
    kind, _, _, _, expect = DAMAGES[case]
    assert expect is not None
    o = lmpo_main(capsys, "train", "--resume", run, *RESUME_TINY[kind])
    problem = outcome_problem(o, expect, "resume", run, newest_checkpoint(pristine))
    assert problem is None, problem


# ------------------------------------------------------------------- 5. permissions and runs_dir
def lmpo_unprivileged(*argv: str) -> Outcome:
    """``lmpo ARGV`` in a process that file permissions apply to: root may read and write anything, so as root the
    command runs without the capabilities that override permissions (``setpriv``, Debian's util-linux)."""
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if IS_ROOT else []
    done = subprocess.run([*drop, sys.executable, "-m", "lmpo.cli", *argv], capture_output=True, text=True,
                          timeout=120)
    return Outcome(done.returncode, done.stdout, done.stderr)


def test_an_unreadable_config_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "my-recipe.yaml"
    path.write_text("name: x\n")
    path.chmod(0)
    assert_user_error(lmpo_unprivileged("train", str(path), f"train.runs_dir={tmp_path / 'runs'}", *TINY_CONTROL),
                      path.name)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("inside", [True, False], ids=["under a read-only parent", "read-only itself"])
def test_an_unwritable_runs_dir_is_one_line(tmp_path: Path, inside: bool) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    runs = read_only / "runs" if inside else read_only
    assert_user_error(lmpo_unprivileged("train", CARTPOLE, f"train.runs_dir={runs}", *TINY_CONTROL), str(read_only))
    assert not list(read_only.iterdir())


def test_a_runs_dir_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    runs.write_text("not a directory\n")
    before = files_under(tmp_path)
    o = lmpo_main(capsys, "train", CARTPOLE, f"train.runs_dir={runs}", *TINY_CONTROL)
    assert_user_error(o, str(runs))
    assert_no_partial_run(tmp_path, before)
    assert runs.read_text() == "not a directory\n"
