"""The ``lmpo`` command: ``train``, ``pretrain``, ``eval``, ``chat`` and ``plot``.

Every user mistake (bad key, wrong type, unknown environment or algorithm, missing file) ends with exit
code 2 and one line naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmpo.config import ConfigError

EXIT_USAGE = 2
DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "chatbot.yaml"


def _cmd_train(args: argparse.Namespace) -> int:
    from lmpo.config import load_config
    from lmpo.train.trainer import Trainer, fresh_run_dir, read_run_config

    if args.resume:
        run_dir = Path(args.resume)
        overrides = ([args.config] if args.config else []) + args.overrides  # CONFIG slot may hold an override
        cfg = read_run_config(run_dir, overrides)
    else:
        config, overrides = _config_and_overrides(args)
        cfg = load_config(config, overrides)
        run_dir = fresh_run_dir(cfg)
    print(f"run directory: {run_dir}")  # before pre-training, which may take minutes
    trainer = Trainer(cfg, run_dir=run_dir, resume=bool(args.resume))
    summary = trainer.train()
    if not cfg.is_text:
        print(f"done: {summary['env_steps']} env steps, {summary['iterations']} updates, "
              f"eval return {summary['eval/mean_return']:.2f} +/- {summary['eval/std_return']:.2f}")
        return 0
    from lmpo.train.chat_task import ChatTask
    from lmpo.train.report import print_eval_table, print_transcript

    assert isinstance(trainer.task, ChatTask)  # cfg.is_text
    after = {k: v for k, v in summary.items() if k.startswith("eval/")}
    print_eval_table({"before RL": summary["before"], "after RL": after} if summary["before"] else {"after": after},
                     title=f"{cfg.env.id}: {cfg.algo.name} on a {cfg.policy.kind} policy")
    print_transcript(trainer.task, trainer.policy)
    print(f"saved: {trainer.run_dir} (load with lmpo.load, talk with: lmpo chat {trainer.run_dir})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from lmpo.api import load_run

    task, policy, ckpt_name = load_run(args.run_dir)
    cfg = task.cfg
    if cfg.is_text:
        task.prepare(policy, resumed=True)  # the saved reference, for the KL column
        from lmpo.train.progress import PhaseStatus
        from lmpo.train.report import print_eval_table

        with PhaseStatus("evaluate", enabled=cfg.train.progress) as status:
            table = task.evaluate(policy, status.part)
        print_eval_table({"after": table}, title=f"{cfg.env.id}  {ckpt_name}")
        return 0
    from lmpo.train.evaluate import evaluate_policy

    returns = evaluate_policy(policy, cfg.env.id, args.episodes, args.seed, cfg.env.kwargs,
                              deterministic=not args.stochastic)
    print(f"{cfg.env.id}  {ckpt_name}  episodes {len(returns)}  "
          f"return {returns.mean():.2f} +/- {returns.std():.2f}  (min {returns.min():.2f}, max {returns.max():.2f})")
    return 0


def _config_and_overrides(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """CONFIG is optional: ``lmpo train algo.lr=1e-4`` overrides the default recipe."""
    if args.config is None:
        return DEFAULT_RECIPE, args.overrides
    if "=" in args.config and not Path(args.config).exists():
        return DEFAULT_RECIPE, [args.config, *args.overrides]
    return Path(args.config), args.overrides


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from lmpo.config import load_config
    from lmpo.train.trainer import Trainer, fresh_run_dir

    config, overrides = _config_and_overrides(args)
    cfg = load_config(config, overrides)
    if not cfg.is_text:
        raise ConfigError(f"lmpo pretrain is for text environments, not {cfg.env.id}")
    run_dir = fresh_run_dir(cfg)
    print(f"run directory: {run_dir}")
    trainer = Trainer(cfg, run_dir=run_dir)  # pre-trains the model and saves it as the frozen reference
    trainer.save()
    for key, value in trainer.prepare_metrics.items():
        print(f"{key}: {value:.3f}")
    print(f"pre-trained model saved in {trainer.run_dir}; continue with RL: lmpo train --resume {trainer.run_dir}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from lmpo.api import load
    from lmpo.data import Turn
    from lmpo.policies import SamplingConfig
    from lmpo.train.text import generate_replies

    policy, tokenizer = load(args.run_dir)
    if tokenizer is None:
        raise ConfigError(f"{args.run_dir} is not a dialogue run")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, min_new_tokens=1)
    print("Talk to the bot. /reset starts over, /quit (or end of input) leaves.")
    history: list[Turn] = []
    while True:
        try:
            line = input("you: ").strip()
        except EOFError:
            print()
            return 0
        if line == "/quit":
            return 0
        if line == "/reset":
            history = []
            print("(history cleared)")
            continue
        if not line:
            continue
        history.append(Turn("user", line))
        _, _, (reply,) = generate_replies(policy, tokenizer, [history], args.max_context, sampling)
        history.append(Turn("assistant", reply))
        print(f"bot: {reply}")


def _cmd_plot(args: argparse.Namespace) -> int:
    from lmpo.plot import plot_run

    out = plot_run(Path(args.run_dir), Path(args.output) if args.output else None)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lmpo``."""
    parser = argparse.ArgumentParser(prog="lmpo", description="Policy optimisation: REINFORCE, TRPO, PPO.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train from a YAML config, or resume a run")
    p.add_argument("config", nargs="?", help="YAML recipe (default: configs/chatbot.yaml, the dialogue job)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as algo.lr=3e-4")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("pretrain", help="pre-train a dialogue model (the start of RL and its reference)")
    p.add_argument("config", nargs="?", help="YAML recipe (default: configs/chatbot.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as text.pretrain.epochs=4")
    p.set_defaults(fn=_cmd_pretrain)
    p = sub.add_parser("chat", help="talk to a trained dialogue model in the terminal")
    p.add_argument("run_dir")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1: off)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="longest reply")
    p.add_argument("--max-context", type=int, default=256, help="dialogue tokens kept as context")
    p.set_defaults(fn=_cmd_chat)
    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation environments")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the mode")
    p.set_defaults(fn=_cmd_eval)
    p = sub.add_parser("plot", help="write a PNG of a run's learning curves")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(fn=_cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "episodes", 1) < 1:
        print("lmpo: error: --episodes must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"lmpo: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lmpo: interrupted (resume with lmpo train --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
