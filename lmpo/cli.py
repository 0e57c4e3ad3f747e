"""The ``lmpo`` command: ``train``, ``pretrain``, ``train-rm``, ``eval``, ``chat``, ``serve``, ``feedback``, ``plot``
and ``recipes``.

Every user mistake (bad key, wrong type, unknown environment or algorithm, missing file) ends with exit
code 2 and one line naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

from lmpo.config import MAX_TOKENS, ConfigError

if TYPE_CHECKING:
    from lmpo.config import Config
    from lmpo.data import Turn
    from lmpo.train.trainer import Trainer

EXIT_USAGE = 2
EXIT_DIVERGED = 1
# what the machine refuses (a full disk, a read-only or forbidden place): the user's to fix, not a bug
USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EISDIR,
                  errno.ENOTDIR}
DEFAULT_RECIPE_NAME = "support"  # the recipe `lmpo train` and `lmpo pretrain` run without a CONFIG
CONTROL_EVAL_EPISODES = 10
CONTROL_EVAL_SEED = 12345
HISTORY_FILE = "~/.lmpo_history"
CHAT_COMMANDS = {"/help": "list these commands", "/reset": "forget the conversation and start over",
                 "/quit": "leave (so do Ctrl-D and Ctrl-C)"}


# ------------------------------------------------------------------------------------------- recipes
def builtin_recipes() -> dict[str, Traversable]:
    """The recipes shipped in ``lmpo/configs/``, by name (file name without ``.yaml``), sorted."""
    folder = resources.files("lmpo") / "configs"
    names = {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml")}
    return dict(sorted(names.items()))


def recipe_description(recipe: Traversable) -> str:
    """The first ``# ...`` comment line of a recipe (every recipe starts with comments saying what it does),
    with "..." where the sentence goes on."""
    comments = [line.lstrip("#").strip() for line in recipe.read_text().splitlines() if line.startswith("#")]
    if not comments:
        return ""
    continued = len(comments) > 1 and not comments[0].endswith(".")
    return comments[0] + (" ..." if continued else "")


def resolve_recipe(name_or_path: str | None) -> Traversable:
    """A recipe file: an existing path wins, else a built-in recipe name (None: the default recipe)."""
    recipes = builtin_recipes()
    if name_or_path is None:
        name_or_path = DEFAULT_RECIPE_NAME
    elif Path(name_or_path).is_file():
        return Path(name_or_path)
    name = name_or_path.removesuffix(".yaml")
    if name in recipes and len(Path(name_or_path).parts) == 1:  # configs/chatbot.yaml names a file, not a recipe
        return recipes[name]
    raise ConfigError(f"no recipe file or built-in recipe named {name_or_path} (built-in: {', '.join(recipes)})")


def load_recipe(recipe: Traversable, overrides: list[str]) -> Config:
    """The validated config of a recipe file (a path or a built-in recipe) with dotted overrides."""
    from lmpo.config import load_config

    with resources.as_file(recipe) as path:  # the file itself for an installed package
        return load_config(path, overrides)


def _config_and_overrides(args: argparse.Namespace) -> tuple[Traversable, list[str]]:
    """CONFIG is optional: ``lmpo train algo.lr=1e-4`` overrides the default recipe."""
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        return resolve_recipe(None), [args.config, *args.overrides]
    return resolve_recipe(args.config), args.overrides


def _cmd_recipes(args: argparse.Namespace) -> int:
    recipes = builtin_recipes()
    if args.action != "cp":
        labels = {name: f"{name} (default)" if name == DEFAULT_RECIPE_NAME else name for name in recipes}
        width = max(map(len, labels.values()))
        for name, recipe in recipes.items():
            print(f"{labels[name]:<{width}}  {recipe_description(recipe)}")
        return 0
    if args.name not in recipes:
        raise ConfigError(f"no built-in recipe named {args.name} (built-in: {', '.join(recipes)})")
    dest = Path(args.dest) if args.dest else Path(f"{args.name}.yaml")
    if dest.is_dir():
        dest = dest / f"{args.name}.yaml"
    try:
        with dest.open("x") as f:  # "x": never overwrite a file someone may have edited
            f.write(recipes[args.name].read_text())
    except FileExistsError:
        raise ConfigError(f"{dest} already exists (not overwritten); choose another DEST") from None
    except OSError as e:
        raise ConfigError(f"cannot write {dest}: {e.strerror}") from None
    print(f"copied {args.name} to {dest}; edit it, then: lmpo train {dest}")
    return 0


# -------------------------------------------------------------------------------------- train, eval
def _user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that are the user's to fix (a setting, a file): one line and exit code 2."""
    from lmpo.data.corpus import CorpusError
    from lmpo.envs.knowledge import KnowledgeBaseError
    from lmpo.rewards import RewardError

    return ConfigError, CorpusError, KnowledgeBaseError, RewardError


def _start(cfg: Config, run_dir: Path, resume: bool) -> Trainer:
    """The trainer of a fresh run in its newly claimed directory, or of a resumed one. A fresh start that fails on
    the user's mistake before it has anything to resume from removes its directory: nothing is left that looks
    like a run; pre-training's checkpoint (a disk that filled up an hour in) is kept for ``--resume``."""
    from lmpo.train import distributed
    from lmpo.train.text_task import PRETRAIN_DIR
    from lmpo.train.trainer import Trainer

    failures: tuple[type[Exception], ...] = (*_user_errors(), OSError)
    try:
        return Trainer(cfg, run_dir=run_dir, resume=resume)
    except failures:
        resumable = (run_dir / PRETRAIN_DIR / "state.pt").is_file() or any(run_dir.glob("checkpoints/iter_*"))
        if not resume and not resumable and distributed.rank() == 0:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _cmd_train(args: argparse.Namespace) -> int:
    """``lmpo train``, in one process or in each of the processes ``torchrun`` starts (data-parallel)."""
    from lmpo.train import distributed

    if args.resume:
        from lmpo.train.trainer import read_run_config

        overrides = ([args.config] if args.config else []) + args.overrides  # CONFIG slot may hold an override
        cfg = read_run_config(Path(args.resume), overrides)
    else:
        cfg = load_recipe(*_config_and_overrides(args))
    distributed.init(cfg.train.device)
    try:
        return _train(cfg, args.resume)
    finally:
        distributed.close()


def _train(cfg: Config, resume: str | None) -> int:
    from lmpo.train import distributed
    from lmpo.train.rundir import claim_run_dir

    lead = distributed.rank() == 0  # under torchrun rank 0 claims the directory and reports; the others train
    if resume:
        run_dir = Path(resume)
    else:
        run_dir = distributed.broadcast(claim_run_dir(cfg.train.runs_dir, cfg.name) if lead else None)
    if lead:
        print(f"run directory: {run_dir}" + (f" ({distributed.world_size()} processes)"
                                             if distributed.world_size() > 1 else ""))  # before pre-training
    trainer = _start(cfg, run_dir, bool(resume))
    summary = trainer.train()
    if not lead:
        return 0
    if not cfg.is_text:
        print(f"done: {summary['env_steps']} env steps, {summary['iterations']} updates, "
              f"eval return {summary['eval/mean_return']:.2f} +/- {summary['eval/std_return']:.2f}")
        return 0
    from lmpo.train.report import print_eval_table, print_transcript
    from lmpo.train.text_task import TextTask

    assert isinstance(trainer.task, TextTask)  # cfg.is_text
    after = {k: v for k, v in summary.items() if k.startswith("eval/")}
    print_eval_table({"before RL": summary["before"], "after RL": after} if summary["before"] else {"after": after},
                     title=f"{cfg.env.id}: {cfg.algo.name} on a {cfg.policy.kind} policy")
    print_transcript(trainer.task, trainer.policy)
    print(f"saved: {trainer.run_dir} (load with lmpo.load, talk with: lmpo chat {trainer.run_dir})")
    return 0


def _text_eval_overrides(args: argparse.Namespace) -> list[str]:
    """A text run's number of evaluated conversations from the command line (its own where not given)."""
    return [] if args.episodes is None else [f"text.eval_conversations={args.episodes}"]


def _cmd_eval(args: argparse.Namespace) -> int:
    from lmpo.api import load_run
    from lmpo.train.trainer import read_run_config

    if read_run_config(Path(args.run_dir)).is_text:
        if args.stochastic:
            raise ConfigError("--stochastic is for control runs (a text run's evaluation reports both greedy "
                              "and sampled replies)")
        task, policy, ckpt_name = load_run(args.run_dir, overrides=_text_eval_overrides(args))
        cfg = task.cfg
        if args.seed is not None:  # the sampled conversations' draws; the examples stay the run's own
            task.eval_seed = args.seed
        task.prepare(policy, resumed=True)  # the saved reference, for the KL column
        from lmpo.train.progress import PhaseStatus
        from lmpo.train.report import print_eval_table

        with PhaseStatus("evaluate", enabled=cfg.train.progress) as status:
            table = task.evaluate(policy, status.part)
        print_eval_table({"after": table}, title=f"{cfg.env.id}  {ckpt_name}  seed {task.eval_seed}")
        return 0
    from lmpo.train.evaluate import evaluate_policy

    task, policy, ckpt_name = load_run(args.run_dir)
    cfg = task.cfg
    seed = CONTROL_EVAL_SEED if args.seed is None else args.seed
    returns = evaluate_policy(policy, cfg.env.id, args.episodes or CONTROL_EVAL_EPISODES, seed, cfg.env.kwargs,
                              deterministic=not args.stochastic)
    print(f"{cfg.env.id}  {ckpt_name}  episodes {len(returns)}  "
          f"return {returns.mean():.2f} +/- {returns.std():.2f}  (min {returns.min():.2f}, max {returns.max():.2f})")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from lmpo.train.rundir import claim_run_dir

    cfg = load_recipe(*_config_and_overrides(args))
    if not cfg.is_text:
        raise ConfigError(f"lmpo pretrain is for text environments, not {cfg.env.id}")
    run_dir = claim_run_dir(cfg.train.runs_dir, cfg.name)
    print(f"run directory: {run_dir}")
    trainer = _start(cfg, run_dir, resume=False)  # pre-trains the model and saves it as the frozen reference
    try:
        trainer.save()
    finally:
        trainer.close()
    for key, value in trainer.prepare_metrics.items():
        print(f"{key}: {value:.3f}")
    print(f"pre-trained model saved in {trainer.run_dir}; continue with RL: lmpo train --resume {trainer.run_dir}")
    return 0


# --------------------------------------------------------------------------------------------- chat
@contextlib.contextmanager
def line_history(path: Path) -> Iterator[None]:
    """Line editing and a history kept in ``path`` through ``readline`` where the platform has it; the history
    is saved only where it can be, and never fails the chat."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        yield
        return
    with contextlib.suppress(OSError):  # no history yet, or unreadable
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # not writable: the history is not kept
            readline.write_history_file(path)


def chat_loop(reply: Callable[[list[Turn]], list[Turn]], read: Callable[[str], str] | None = None) -> int:
    """Talk until /quit, end of input or Ctrl-C: ``reply(history)`` gives the bot's turn (its lines and the
    results of the tools it called), ``read(prompt)`` the person's line (default ``input``). Returns the exit
    code (0)."""
    from lmpo.data import Turn

    read = read or input
    history: list[Turn] = []
    try:
        while True:
            line = read("you: ").strip()
            if line == "/quit":
                print("bye")
                return 0
            if line == "/help":
                for command, meaning in CHAT_COMMANDS.items():
                    print(f"  {command:<7} {meaning}")
            elif line == "/reset":
                history = []
                print("(history cleared)")
            elif line.startswith("/"):
                print(f"(unknown command {line.split()[0]}; /help lists the commands)")
            elif line:
                history.append(Turn("user", line))
                for turn in reply(history):
                    history.append(turn)
                    print(f"{'tool' if turn.role == 'tool' else 'bot'}: {turn.content}")
    except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C: leaving, not an error
        print("\nbye")
        return 0


def _chat_reply(run_dir: str, args: argparse.Namespace) -> Callable[[list[Turn]], list[Turn]]:
    """The bot of a text run: its next turn after a history, sampled as the command line says; a tool call (a
    Support bot's lookup) is answered by the run's environment and the bot goes on, as in training."""
    from lmpo.api import load_run
    from lmpo.data import Turn, decode_reply
    from lmpo.envs.text import MAX_TOOL_CALLS
    from lmpo.policies import SamplingConfig, generate
    from lmpo.policies.generation import left_pad

    try:
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens, min_new_tokens=1)
    except ValueError:
        raise ConfigError("invalid sampling settings: need a finite --temperature >= 0, --top-k >= 0, "
                          "0 < --top-p <= 1 and --max-new-tokens >= 1") from None
    if args.max_context is not None and args.max_context < 1:
        raise ConfigError("--max-context must be at least 1 token")
    if args.max_new_tokens > MAX_TOKENS:
        raise ConfigError(f"--max-new-tokens must be at most {MAX_TOKENS}")
    task, policy, _ = load_run(run_dir)
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"{run_dir} is not a dialogue run")
    context = args.max_context or task.t.max_prompt_tokens
    longest = task.cfg.policy.max_len if task.cfg.policy.kind == "transformer" else None
    if longest is not None and context + args.max_new_tokens > longest:
        raise ConfigError(f"--max-context {context} + --max-new-tokens {args.max_new_tokens} exceed the model's "
                          f"{longest} positions (policy.max_len)")
    device = next(policy.parameters()).device

    def reply(history: list[Turn]) -> list[Turn]:
        turns: list[Turn] = []
        for _ in range(MAX_TOOL_CALLS + 1):
            prompt = task.chat.opening(history + turns)[-context:]  # the last `context` tokens
            gen = generate(policy, left_pad([prompt], policy.pad_id, device), sampling)
            turns.append(Turn("assistant", decode_reply(tokenizer, gen.tokens[0, gen.mask[0] > 0].tolist())))
            result = task.env.tool(turns[-1].content)
            if result is None:
                break
            turns.append(result)
        return turns

    return reply


def _cmd_chat(args: argparse.Namespace) -> int:
    try:
        reply = _chat_reply(args.run_dir, args)
    except KeyboardInterrupt:  # while the model loads
        print("\nbye")
        return 0
    top_k = args.top_k or "off"
    top_p = args.top_p if args.top_p < 1 else "off"
    print(f"sampling: temperature {args.temperature}, top-k {top_k}, top-p {top_p}, "
          f"max new tokens {args.max_new_tokens}")
    print("Talk to the bot. /help lists the commands, /reset starts over, /quit (or end of input) leaves.")
    if isinstance(sys.stdin, io.TextIOWrapper):  # bytes that are not UTF-8 become U+FFFD: text, never a crash
        sys.stdin.reconfigure(errors="replace")
    if not sys.stdin.isatty():  # piped input: no line editing, and no history to keep
        return chat_loop(reply)
    with line_history(Path(HISTORY_FILE).expanduser()):
        return chat_loop(reply)


def _cmd_train_rm(args: argparse.Namespace) -> int:
    from lmpo.train.reward_model import run_train_rm

    config, overrides = args.config, args.overrides
    if config is not None and "=" in config and not Path(config).exists():  # only overrides of a resumed run
        config, overrides = None, [config, *overrides]
    builtin = resources.files("lmpo") / "configs" / "reward-models" / f"{config}.yaml"
    if config is not None and not Path(config).exists() and builtin.is_file():  # a built-in reward-model recipe
        config = str(builtin)
    run_dir, summary = run_train_rm(config, overrides, args.resume)
    print(f"held-out pairwise accuracy {summary['rm/heldout_accuracy']:.3f} (train {summary['rm/train_accuracy']:.3f})"
          f"\nsaved: {run_dir} (use it as the reward {{name: model, path: {run_dir}}})")
    return 0


# -------------------------------------------------------------------------------------- serve, feedback
def _api_keys(args: argparse.Namespace) -> list[str]:
    """``--api-key`` values and the lines of ``--api-keys-file`` (blank lines and ``#`` comments skipped)."""
    keys = list(args.api_key or [])
    if args.api_keys_file:
        try:
            lines = Path(args.api_keys_file).read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"--api-keys-file: cannot read {args.api_keys_file} ({e.strerror})") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if any(len(k) < 8 or any(c.isspace() for c in k) for k in keys):
        raise ConfigError("an API key must be at least 8 characters with no spaces")
    if (args.api_key is not None or args.api_keys_file) and not keys:
        raise ConfigError("--api-keys-file holds no key")
    return keys


def _feedback_db(run_dir: str, db: str | None) -> Path:
    from lmpo.serve.store import DB_NAME

    return Path(db) if db else Path(run_dir) / DB_NAME


def _cmd_serve(args: argparse.Namespace) -> int:
    from functools import partial

    from lmpo.api import newer_checkpoint, served_model
    from lmpo.serve import FeedbackStore, Limits, ModelSource, ServeSettings, create_app
    from lmpo.serve.runner import run_server

    for flag in ("max_batch", "max_tokens", "max_n", "port"):
        if getattr(args, flag) < (0 if flag == "port" else 1):
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least {0 if flag == 'port' else 1}")
    if args.batch_window_ms < 0:
        raise ConfigError("--batch-window-ms must be at least 0")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    keys = _api_keys(args)
    limits = Limits(max_tokens=args.max_tokens, default_max_tokens=min(args.default_max_tokens, args.max_tokens),
                    max_n=args.max_n)
    watch = partial(newer_checkpoint, args.run_dir, args.quantize) if args.watch else None
    settings = ServeSettings(limits, keys, args.max_batch, args.batch_window_ms / 1000, watch=watch)
    db = _feedback_db(args.run_dir, args.db)
    store = FeedbackStore(db)
    # the model is loaded and decoded in a worker process of its own (see lmpo.serve.worker)
    app = create_app(ModelSource(partial(served_model, args.run_dir, args.quantize), args.threads), store, settings)
    where = f"http://{args.host}:{args.port}"
    engine = app.state.engine
    print(f"serving {engine.name} ({engine.version}{', int8' if args.quantize else ''}) at {where}/  "
          f"(OpenAI API: {where}/v1, metrics: {where}/metrics, feedback: {db})", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        print("warning: listening beyond this machine without API keys (--api-key)", file=sys.stderr, flush=True)
    run_server(app, args.host, args.port)
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    import json

    from lmpo.serve.export import preference_pairs, rated_replies
    from lmpo.serve.store import FeedbackStore

    db = _feedback_db(args.run_dir, args.db)
    if not db.is_file():
        raise ConfigError(f"no feedback store at {db} (lmpo serve {args.run_dir} writes it)")
    store = FeedbackStore(db)
    try:
        rows = list(preference_pairs(store) if args.format == "pairs" else rated_replies(store))
    finally:
        store.close()
    out = Path(args.output) if args.output else Path(args.run_dir) / f"feedback-{args.format}.jsonl"
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    hint = f" (train a reward model: lmpo train-rm RECIPE data.pairs={out})" if args.format == "pairs" else ""
    print(f"wrote {len(rows)} {'preference pairs' if args.format == 'pairs' else 'rated replies'} to {out}{hint}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from lmpo.plot import plot_run

    out = plot_run(Path(args.run_dir), Path(args.output) if args.output else None)
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lmpo``."""
    parser = argparse.ArgumentParser(prog="lmpo", description="Policy optimisation: REINFORCE, TRPO, PPO.")
    sub = parser.add_subparsers(dest="command", required=True)
    recipe_help = (f"YAML recipe file or built-in recipe name (default: {DEFAULT_RECIPE_NAME}; "
                   "lmpo recipes lists them)")
    p = sub.add_parser("train", help="train from a recipe, or resume a run")
    p.add_argument("config", nargs="?", help=recipe_help)
    p.add_argument("overrides", nargs="*", help="dotted overrides such as algo.lr=3e-4")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("pretrain", help="pre-train a dialogue model (the start of RL and its reference)")
    p.add_argument("config", nargs="?", help=recipe_help)
    p.add_argument("overrides", nargs="*", help="dotted overrides such as text.pretrain.epochs=4")
    p.set_defaults(fn=_cmd_pretrain)
    p = sub.add_parser("train-rm", help="train a reward model on preference pairs (Bradley-Terry)")
    p.add_argument("config", nargs="?", help="YAML reward-model recipe, or a built-in one's name (chatbot)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=8")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the reward-model run in RUN_DIR")
    p.set_defaults(fn=_cmd_train_rm)
    p = sub.add_parser("chat", help="talk to a trained dialogue model in the terminal")
    p.add_argument("run_dir")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1: off)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="longest reply")
    p.add_argument("--max-context", type=int, default=None,
                   help="dialogue tokens kept as context (default: the run's text.max_prompt_tokens)")
    p.set_defaults(fn=_cmd_chat)
    p = sub.add_parser("serve", help="serve a text run: OpenAI-compatible API, web chat, metrics, feedback")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--watch", action="store_true", help="serve the run's newest checkpoint as training writes it")
    p.add_argument("--api-key", action="append", help="a key clients must send as a bearer token (repeatable)")
    p.add_argument("--api-keys-file", help="a file of keys, one per line")
    p.add_argument("--quantize", choices=["int8"], help="int8 linear layers (dynamic quantisation, CPU)")
    p.add_argument("--db", help="the feedback store (default RUN_DIR/feedback.sqlite)")
    p.add_argument("--max-batch", type=int, default=32, help="choices decoded together (1: no batching)")
    p.add_argument("--batch-window-ms", type=float, default=10.0, help="how long a request waits for others")
    p.add_argument("--max-tokens", type=int, default=256, help="the largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=64, help="max_tokens when a request gives none")
    p.add_argument("--max-n", type=int, default=8, help="the largest n a request may ask for")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of the generation worker (default: the CPUs less one, kept for HTTP)")
    p.set_defaults(fn=_cmd_serve)
    p = sub.add_parser("feedback", help="the served model's feedback as training data")
    actions = p.add_subparsers(dest="action", required=True)
    ex = actions.add_parser("export", help="write preference pairs or rated replies as JSONL")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=["pairs", "ratings"], default="pairs")
    ex.add_argument("-o", "--output", help="JSONL file (default RUN_DIR/feedback-FORMAT.jsonl)")
    ex.add_argument("--db", help="the feedback store (default RUN_DIR/feedback.sqlite)")
    p.set_defaults(fn=_cmd_feedback)
    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--episodes", "--conversations", type=int, default=None,
                   help=f"episodes of a control run (default {CONTROL_EVAL_EPISODES}); conversations per split of a "
                        "text run (default: the run's text.eval_conversations)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of the evaluation (default: {CONTROL_EVAL_SEED} for control runs, the run's own "
                        "seed for text runs)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode (control runs)")
    p.set_defaults(fn=_cmd_eval)
    p = sub.add_parser("plot", help="write a PNG of a run's learning curves")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(fn=_cmd_plot)
    p = sub.add_parser("recipes", help="list the built-in recipes, or copy one out to edit")
    actions = p.add_subparsers(dest="action")
    actions.add_parser("ls", help="list the built-in recipes (the default)")
    cp = actions.add_parser("cp", help="copy a built-in recipe to a file to edit")
    cp.add_argument("name", help="built-in recipe name")
    cp.add_argument("dest", nargs="?", help="file or directory to copy to (default ./NAME.yaml); never overwritten")
    p.set_defaults(fn=_cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "episodes", None) is not None and args.episodes < 1:
        print("lmpo: error: --episodes must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "seed", None) is not None and not 0 <= args.seed < 2**32:
        print("lmpo: error: --seed must be between 0 and 2**32 - 1", file=sys.stderr)
        return EXIT_USAGE
    from lmpo.train.runtime import TrainingDiverged

    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # here, not at exit: a reader that has gone (| head) is caught below
        return code
    except _user_errors() as e:  # the user's file or setting (or a user's reward function): one line
        print(f"lmpo: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as e:
        print(f"lmpo: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except BrokenPipeError:  # `lmpo recipes | head -1`: the reader has gone, not an error (an OSError: caught first)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"lmpo: error: {where}{e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        resume = " (resume with lmpo train --resume RUN_DIR)" if args.command == "train" else ""
        print(f"lmpo: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
