"""Built-in recipes ship inside the package: the wheel holds them, names resolve anywhere, ``lmpo recipes``."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lmpo.cli import DEFAULT_RECIPE_NAME, builtin_recipes, load_recipe, main, resolve_recipe
from lmpo.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "lmpo" / "configs").glob("*.yaml"), key=lambda p: p.stem)  # chatbot before chatbot-*


def test_the_wheel_holds_every_recipe_and_its_default_resolves_when_installed(tmp_path: Path) -> None:
    # built from a copy: an in-tree build would leave build/ and egg-info behind in the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT / "lmpo", src / "lmpo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], cwd=src, check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("lmpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lmpo/configs/chatbot.yaml" in names and "lmpo/py.typed" in names
    assert len(RECIPES) >= 9 and {f"lmpo/configs/{p.name}" for p in RECIPES} <= names
    # installed from the wheel (a pure-Python wheel installs by unpacking), away from any checkout
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    probe = "from lmpo.cli import resolve_recipe; print(resolve_recipe(None))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == site / "lmpo" / "configs" / f"{DEFAULT_RECIPE_NAME}.yaml"


def test_every_recipe_file_is_a_built_in_recipe() -> None:
    assert list(builtin_recipes()) == [p.stem for p in RECIPES]
    assert DEFAULT_RECIPE_NAME in builtin_recipes()
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs" / "cartpole-ppo.yaml").is_file()  # README paths


def test_recipes_resolve_by_name_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = resolve_recipe(None)
    assert default.name == f"{DEFAULT_RECIPE_NAME}.yaml" and default.is_file()
    assert resolve_recipe("cartpole-ppo").name == "cartpole-ppo.yaml"
    assert resolve_recipe("cartpole-ppo.yaml").name == "cartpole-ppo.yaml"
    assert load_recipe(resolve_recipe("cartpole-ppo"), ["seed=7"]).seed == 7
    # a file that exists wins over the built-in recipe of the same name
    mine = tmp_path / "cartpole-ppo.yaml"
    mine.write_text("name: mine\nenv: {id: CartPole-v1}\n")
    assert resolve_recipe("cartpole-ppo.yaml") == Path("cartpole-ppo.yaml")
    assert load_recipe(resolve_recipe("cartpole-ppo.yaml"), []).name == "mine"
    for unknown in ("cartpole-ddpg", "configs/cartpole-ppo.yaml"):  # a path names a file, never a recipe
        with pytest.raises(ConfigError, match="built-in: acrobot-trpo, cartpole-ppo"):
            resolve_recipe(unknown)


def test_an_unknown_recipe_is_one_line_listing_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "cartpole-ddpg"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lmpo: error: no recipe file or built-in recipe named cartpole-ddpg")
    assert all(p.stem in err[0] for p in RECIPES)


def test_recipes_lists_names_and_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [p.stem for p in RECIPES]
    ppo = next(ln for ln in lines if ln.startswith("cartpole-ppo "))
    assert ppo.endswith("PPO on CartPole-v1 with the RL Zoo's tuned hyper-parameters (rl-baselines3-zoo, "
                        "hyperparams/ppo.yml).")  # the first comment line
    assert any(ln.startswith(f"{DEFAULT_RECIPE_NAME} (default) ") for ln in lines)
    assert main(["recipes", "ls"]) == 0 and capsys.readouterr().out.splitlines() == lines


def test_recipes_cp_copies_and_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    original = (ROOT / "lmpo" / "configs" / "cartpole-ppo.yaml").read_text()
    assert main(["recipes", "cp", "cartpole-ppo"]) == 0
    assert (tmp_path / "cartpole-ppo.yaml").read_text() == original
    assert main(["recipes", "cp", "cartpole-ppo", "mine.yaml"]) == 0
    (tmp_path / "sub").mkdir()
    assert main(["recipes", "cp", "cartpole-ppo", "sub"]) == 0  # a directory: the recipe's own file name in it
    assert (tmp_path / "mine.yaml").read_text() == (tmp_path / "sub" / "cartpole-ppo.yaml").read_text() == original
    capsys.readouterr()
    (tmp_path / "mine.yaml").write_text("edited")
    for args in (["cartpole-ppo", "mine.yaml"], ["cartpole-ppo"], ["cartpole-ddpg"], ["cartpole-ppo", "no/dir/x.yaml"]):
        assert main(["recipes", "cp", *args]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("lmpo: error:"), err
    assert (tmp_path / "mine.yaml").read_text() == "edited"
