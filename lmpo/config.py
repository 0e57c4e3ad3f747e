"""The validated configuration tree: one pydantic model per section, one ``description`` per setting.

YAML recipes under ``configs/`` are loaded with ``load_config`` and dotted overrides such as
``algo.lr=3e-4``; any mistake surfaces as a ``ConfigError`` naming the offending key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FLOAT32_MAX = 3.4e38  # numbers past this are inf in float32: a coefficient of 1e300 is a typo, not a setting
_EXPONENT_NUMBER = re.compile(r"[-+]?\d+[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line naming the problem."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and numbers are finite
    (``gt=0`` alone lets ``.inf`` through, and an infinite learning rate trains every weight to NaN), within what
    float32 holds, and not ``true``/``false`` (pydantic would read ``true`` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is None or not _numeric(field.annotation):
                    continue
                if isinstance(value, bool):
                    raise ValueError(f"{key}: expected a number, got {str(value).lower()}")
                if isinstance(value, float) and abs(value) > FLOAT32_MAX:
                    raise ValueError(f"{key}: {value:g} is beyond what float32 holds ({FLOAT32_MAX:.2g})")
        return data


def _numeric(annotation: Any) -> bool:
    """Whether a field takes a number (int or float, optional or not) and no bool."""
    args = get_args(annotation) or (annotation,)
    return bool(set(args) & {int, float}) and bool not in args


class EnvConfig(Section):
    id: str = Field("CartPole-v1", description="Any registered Gymnasium id, e.g. CartPole-v1 or Pendulum-v1.")
    num_envs: int = Field(8, ge=1, le=4096, description="Parallel environments in the vector env.")
    vectorization: Literal["sync", "async"] = Field(
        "sync", description="Gymnasium SyncVectorEnv (one process, resumable) or AsyncVectorEnv (subprocesses)."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for gymnasium.make; "
                                   "for a text environment, its own settings (tables below).")

    @field_validator("id")
    @classmethod
    def _registered(cls, v: str) -> str:
        import gymnasium as gym

        import lmpo.envs  # noqa: F401  (registers lmpo's own environments)

        try:
            gym.spec(v)
        except gym.error.Error as e:
            raise ValueError(f"unknown environment {v!r} ({e})") from None
        return v


LM_KINDS = ("gru", "lstm", "transformer", "hf")
# upper bounds on sizes: beyond them a setting is a typo, not a model (10**9 would die allocating, not say so)
MAX_WIDTH = 1 << 16
MAX_TOKENS = 1 << 16
MAX_BATCH = 1 << 20


class LoraSection(Section):
    r: int = Field(8, ge=1, le=4096, description="Rank of each adapter.")
    alpha: int = Field(16, ge=1, description="Scale numerator: an adapter's update is scaled by alpha / r.")
    target_modules: list[str] | None = Field(
        None, description="Names of the modules that get adapters, as peft matches them (None: every linear layer "
        "but the output head, peft's 'all-linear').")


class PolicyConfig(Section):
    kind: Literal["mlp", "gru", "lstm", "transformer", "hf"] = Field(
        "mlp", description="'mlp' for control; 'gru', 'lstm', 'transformer' or 'hf' for text environments."
    )
    hidden_sizes: list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]] = Field(
        [64, 64], description="Hidden layer widths of the actor (and critic).")
    activation: Literal["tanh", "relu", "gelu"] = Field("tanh", description="Hidden activation.")
    critic: Literal["separate", "shared", "none"] = Field(
        "separate", description="Value function: its own MLP, a head on the actor trunk, or none."
    )
    log_std_init: float = Field(0.0, description="Initial log standard deviation of Gaussian policies.")
    normalize_obs: bool = Field(False, description="Normalise observations with running mean/std.")
    embed: int = Field(256, ge=1, le=MAX_WIDTH, description="gru/lstm: embedding size.")
    hidden: int = Field(512, ge=1, le=MAX_WIDTH, description="gru/lstm: recurrent state size.")
    dropout: float = Field(0.1, ge=0, lt=1, description="gru/lstm/transformer: dropout in pre-training.")
    n_layer: int = Field(4, ge=1, le=256, description="transformer: decoder blocks.")
    n_head: int = Field(4, ge=1, le=1024, description="transformer: attention heads (a divisor of d_model).")
    d_model: int = Field(256, ge=1, le=MAX_WIDTH, description="transformer: model width.")
    max_len: int = Field(512, ge=8, le=MAX_TOKENS, description="transformer: longest sequence (positions).")
    positions: Literal["learned", "rotary"] = Field(
        "learned", description="transformer: a learned position embedding, or rotary positions (RoPE: attention "
        "depends on distance, not place; the support desk's model copies names and numbers far better with it).")
    path: str | None = Field(None, description="hf: local directory or hub id of an AutoModelForCausalLM.")
    gradient_checkpointing: bool = Field(
        False, description="transformer, hf: keep only each block's input in a training pass and recompute the block "
        "in backward (activation memory of one block instead of all, for about a third more compute).")
    compile: list[Literal["decode", "score"]] = Field(
        [], description="transformer, hf (GPT-2 architecture): torch.compile the transformer blocks for 'decode', "
        "the passes without gradients (generation, the reference's and the evaluation's scoring), and/or 'score', "
        "those with (the updates' forward and backward); the first call of each compiles (a minute on a small CPU). "
        "Not 'score' with TRPO, whose Fisher products differentiate twice. docs/scaling.md has measurements.")
    lora: LoraSection | None = Field(
        None, description="hf: train LoRA adapters (peft; pip install 'lmpo[lora]') instead of every weight. The "
        "reference is the same network with its adapters disabled (no second copy), the value head stays separate; "
        "the run's hf/ export is the merged model, with the adapter in peft's format in hf/adapter.")


class SamplingSection(Section):
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0: off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1: off).")
    epsilon: float = Field(0.0, ge=0, le=1, description="Probability of a uniformly random token.")
    min_new_tokens: int = Field(1, ge=0, description="<eos> is banned before this many reply tokens.")
    max_new_tokens: int = Field(24, ge=1, le=MAX_TOKENS, description="Longest reply.")

    @model_validator(mode="after")
    def _lengths(self) -> SamplingSection:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"text.sampling.min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens "
                             f"({self.max_new_tokens})")
        return self


class KLSection(Section):
    coef: float = Field(0.05, ge=0, description="Initial per-token KL penalty coefficient.")
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator (Schulman 2020).")
    target: float | None = Field(None, gt=0, description="Adaptive controller's target KL (None: fixed coef).")
    horizon: int = Field(10_000, ge=1, description="Adaptive controller's horizon in replies (Ziegler 2019).")


class PretrainSection(Section):
    epochs: int = Field(8, ge=0, description="Supervised epochs before RL (0: none).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (one-cycle schedule).")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="Examples per batch (see max_len).")
    max_len: int = Field(128, ge=8, le=MAX_TOKENS, description="Longest training example; a longer dialogue gives "
                         "one example per bot turn.")
    checkpoint_every_s: float = Field(60.0, gt=0, description="Seconds between pre-training's own checkpoints "
                                      "(in <run>/pretrain/: a killed run resumes pre-training where it was).")


class TextConfig(Section):
    vocab_size: int = Field(2048, ge=262, le=1 << 18, description="BPE vocabulary size of a tokenizer trained here.")
    tokenizer: str | None = Field(
        None, description="Directory of an existing chat tokenizer (None: an hf policy's own, or one trained here)."
    )
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    kl: KLSection = Field(default_factory=KLSection)
    rewards: list[dict[str, Any]] | None = Field(
        None, description="The reward: a weighted sum of reward functions, each {name: <registered name, "
        "module:function or file.py:function>, weight: 1.0, <its settings>} (None: the environment's default).")
    conversations_per_update: int = Field(16, ge=1, le=MAX_BATCH, description="Examples (opening lines, customer "
                                          "goals) drawn with replacement per update.")
    samples_per_prompt: int = Field(4, ge=1, le=1024, description="Conversations played from each opening line.")
    max_prompt_tokens: int = Field(96, ge=8, le=MAX_TOKENS,
                                   description="Dialogue history kept in a prompt (the last tokens).")
    eval_conversations: int = Field(0, ge=0, description="Conversations per evaluation split (0: all).")
    eval_samples: int = Field(4, ge=1, le=1024, description="Sampled conversations per example for the sampled "
                              "satisfaction and the KL to the reference (one: a standard error of about 0.02 on 300 "
                              "examples; four halve the sampling noise).")

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v is not None:
            from lmpo.rewards.registry import WeightedReward

            if not v:
                raise ValueError("name at least one reward (or leave text.rewards out for the environment's own)")
            # a RewardError (a ValueError) names the problem; a reward file that is not here is checked where the run
            # is built (a moved run reads its own copy of it), and so is a reward model not trained yet (a recipe
            # names the directory lmpo train-rm will write)
            here = [r for r in v if not (".py:" in str(r.get("name")) and not Path(str(r["name"]).rpartition(":")[0])
                                         .is_file())
                    and not (r.get("name") == "model" and isinstance(r.get("path"), str)
                             and not Path(r["path"]).expanduser().exists())]
            if here:
                WeightedReward.from_specs(here)
        return v


class AdvantageConfig(Section):
    estimator: Literal["gae", "returns"] = Field(
        "gae", description="'gae' (needs a value function) or Monte-Carlo discounted 'returns'."
    )
    gamma: float = Field(0.99, ge=0.0, le=1.0, description="Discount factor.")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda (bias/variance trade-off).")
    baseline: Literal["none", "mean", "loo", "group", "value"] = Field(
        "value", description="Baseline subtracted from Monte-Carlo returns (ignored by GAE): none, the batch mean, "
        "leave-one-out over a prompt's samples (RLOO), their group mean (GRPO), or the learned value.")
    group_std: bool = Field(True, description="baseline 'group': divide by the group's return std + 1e-4 (GRPO); "
                            "false: Dr. GRPO's unscaled advantage.")
    whiten: bool = Field(True, description="Normalise advantages to zero mean, unit variance per batch.")

    @property
    def needs_value(self) -> bool:
        """Whether these advantages read a learned value (GAE, or the value baseline): else no value is trained."""
        return self.estimator == "gae" or self.baseline == "value"


class AlgoBase(Section):
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (of the value function for TRPO).")
    anneal_lr: bool = Field(False, description="Decay the learning rate linearly to 0 over training.")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss when it shares the optimiser.")
    ent_coef: float = Field(0.0, description="Entropy bonus weight.")
    max_grad_norm: float | None = Field(0.5, gt=0, description="Clip the global gradient norm (None: off).")
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon.")
    optimizer: Literal["auto", "flat_adam", "adam"] = Field(
        "auto", description="Adam over the parameters that require gradients: 'flat_adam' re-homes them in one "
        "buffer (one fused step; faster on small dense policies), 'adam' is torch's over the parameters as they are; "
        "'auto' is flat_adam ('adam' under train.fsdp).")
    loss_aggregation: Literal["token_mean", "sequence_mean", "token_sum"] = Field(
        "token_mean", description="How per-token policy losses add up: mean over the batch's tokens, mean per reply "
        "then over replies (GRPO), or sum per reply then mean over replies (Dr. GRPO).")


class ReinforceConfig(AlgoBase):
    name: Literal["reinforce"] = "reinforce"
    lr: float = Field(1e-2, gt=0, description="Adam learning rate.")
    max_grad_norm: float | None = Field(None, gt=0, description="Clip the global gradient norm (None: off).")
    advantage: AdvantageConfig = Field(
        default_factory=lambda: AdvantageConfig(estimator="returns", baseline="mean"),
        description="Monte-Carlo returns with a baseline (Williams 1992).",
    )


class TRPOConfig(AlgoBase):
    name: Literal["trpo"] = "trpo"
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the value function.")
    max_kl: float = Field(0.01, gt=0, description="Trust region: mean KL(pi_old || pi) per update.")
    cg_iters: int = Field(15, ge=1, description="Conjugate-gradient iterations.")
    cg_damping: float = Field(0.1, ge=0, description="Damping added to the Fisher-vector product.")
    fvp_fraction: float = Field(
        1.0, gt=0, le=1, description="Share of the rollout's rows the Fisher-vector products use (0.1-0.2 is "
        "common for large batches: conjugate gradient's cost shrinks with it)."
    )
    backtrack_iters: int = Field(10, ge=1, description="Line-search steps before giving up.")
    backtrack_coef: float = Field(0.8, gt=0, lt=1, description="Step shrink factor per line-search step.")
    vf_iters: int = Field(20, ge=1, description="Epochs of value-function regression per update.")
    vf_batch_size: int = Field(512, ge=1, le=MAX_BATCH, description="Minibatch size (rows) of value regression.")
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig, description="GAE settings.")


class PPOConfig(AlgoBase):
    name: Literal["ppo"] = "ppo"
    epochs: int = Field(10, ge=1, description="Passes over the rollout per update.")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH,
                            description="Minibatch size in rows (steps for control, sequences for LMs).")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    clip_range_vf: float | None = Field(None, gt=0, description="Clip value predictions around old values.")
    anneal_clip: bool = Field(False, description="Decay clip_range linearly to 0 over training.")
    target_kl: float | None = Field(None, gt=0, description="Stop the epochs early once approx KL exceeds it.")
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig, description="GAE settings.")


AlgoConfig = Annotated[ReinforceConfig | TRPOConfig | PPOConfig, Field(discriminator="name")]


class RolloutConfig(Section):
    mode: Literal["steps", "episodes"] = Field(
        "steps", description="'steps': each env runs a fixed number of steps; 'episodes': whole episodes."
    )
    steps_per_env: int = Field(128, ge=1, le=MAX_BATCH, description="Steps per environment per update ('steps' mode).")
    episodes_per_env: int = Field(1, ge=1, le=1024,
                                  description="Episodes per environment per update ('episodes' mode).")


class WandbSection(Section):
    project: str = Field("lmpo", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user; None: your default).")
    mode: Literal["offline", "online"] = Field("offline", description="'offline' writes to <run>/wandb without a "
                                               "network (upload later with `wandb sync`); 'online' streams.")
    tags: list[str] = Field(default_factory=list, description="W&B run tags.")


class TrainConfig(Section):
    total_steps: int = Field(100_000, ge=1, le=10**12, description="Environment steps to train for.")
    eval_every: int = Field(10_000, ge=0, description="Evaluate every this many env steps (0: only at the end).")
    eval_episodes: int = Field(10, ge=1, description="Deterministic episodes per evaluation.")
    checkpoint_every: int = Field(10, ge=1, description="Save a checkpoint every this many updates.")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep on disk.")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (None: torch's default); under torchrun at "
                                "most each process's share of the cores.")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'; under torchrun 'cuda' or 'auto' "
                        "(each process takes the GPU of its LOCAL_RANK).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="'bf16' (text environments): pre-training, rollouts and updates under "
        "torch.autocast to bfloat16 (weights, optimiser and losses stay float32; evaluation runs in float32). "
        "For transformer and hf policies on GPUs and CPUs with bfloat16 units (Intel AMX: RL steps measured "
        "1.5-1.8x faster); the GRU main job was slower (314 s vs 196 s; a PPO iteration 0.81 s vs 0.57 s). "
        "Time a short run first.")
    fsdp: bool = Field(
        False, description="hf policies under torchrun: shard weights, gradients and Adam's state across the processes "
        "during updates (FSDP2), gathered for collection and evaluation; checkpoints in torch.distributed.checkpoint "
        "format, which resume on any number of processes. With policy.lora the frozen base weights are sharded "
        "too. Not with TRPO or policy.compile.")
    runs_dir: str = Field("runs", description="Parent directory of run directories.")
    loggers: list[Literal["tensorboard", "wandb"]] = Field(
        ["tensorboard"], description="Where metrics go besides metrics.jsonl (always written): TensorBoard "
        "(<run>/tb) and/or Weights & Biases (pip install 'lmpo[wandb]'; settings in train.wandb).")
    wandb: WandbSection = Field(default_factory=WandbSection)

    @field_validator("loggers")
    @classmethod
    def _installed(cls, v: list[str]) -> list[str]:
        import importlib.util

        if "wandb" in v and importlib.util.find_spec("wandb") is None:
            raise ValueError("wandb needs the wandb package: pip install 'lmpo[wandb]'")
        return v
    progress: bool = Field(True, description="Show a live progress bar.")


class Config(Section):
    name: str = Field("run", description="Run name: runs/<name>/ (letters, digits, '_', '-', '.'; not only dots).")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of torch, numpy and the environments.")
    env: EnvConfig = Field(default_factory=EnvConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    algo: AlgoConfig = Field(default_factory=PPOConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    text: TextConfig | None = Field(None, description="Dialogue settings (text environments only).")

    @field_validator("name")
    @classmethod
    def _directory_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,200}", v) or set(v) == {"."}:
            raise ValueError("a run name is 1-200 letters, digits, '_', '-' and '.', not only dots (it names a "
                             "directory inside train.runs_dir)")
        return v

    @property
    def is_text(self) -> bool:
        """Whether the environment is a text environment (registered with ``lmpo.envs.register_text_env``)."""
        from lmpo.envs.text import text_env

        return text_env(self.env.id) is not None

    def _blocks_fit(self) -> None:
        p = self.policy
        if p.gradient_checkpointing and p.kind not in ("transformer", "hf"):
            raise ValueError("policy.gradient_checkpointing is for transformer and hf policies")
        if p.compile and p.kind not in ("transformer", "hf"):
            raise ValueError("policy.compile is for transformer and hf policies")
        if "score" in p.compile and self.algo.name == "trpo":
            raise ValueError("policy.compile 'score' cannot serve TRPO: compiled graphs are not twice differentiable "
                             "(its Fisher-vector products need that); compile 'decode' only")

    def _fsdp_fits(self) -> None:
        if not self.train.fsdp:
            return
        problem = None
        if self.policy.kind != "hf":
            problem = "is for hf policies (policy.kind 'hf')"
        elif self.algo.name == "trpo":
            problem = "cannot serve TRPO (its Fisher-vector products differentiate twice through the sharded model)"
        elif self.policy.compile:
            problem = "does not combine with policy.compile"
        elif self.algo.optimizer == "flat_adam":
            problem = "needs algo.optimizer 'adam' or 'auto' (flat_adam re-homes the weights FSDP shards)"
        if problem:
            raise ValueError(f"train.fsdp {problem}")

    def _lora_fits(self, t: TextConfig) -> None:
        if self.policy.lora is None:
            return
        import importlib.util

        if self.policy.kind != "hf":
            raise ValueError("policy.lora is for hf policies (policy.kind 'hf')")
        if t.pretrain.epochs:
            raise ValueError("policy.lora trains adapters on the model at policy.path, whose adapters-off self is the "
                             "reference: set text.pretrain.epochs=0 (fine-tune the model first and point policy.path "
                             "at it)")
        if importlib.util.find_spec("peft") is None:
            raise ValueError("policy.lora needs the peft package: pip install 'lmpo[lora]'")

    def _transformer_fits(self, t: TextConfig) -> None:
        p = self.policy
        if p.kind != "transformer":
            return
        if p.d_model % p.n_head or p.positions == "rotary" and (p.d_model // p.n_head) % 2:
            even = " and an even quotient (rotary positions)" if p.positions == "rotary" else ""
            raise ValueError(f"policy.d_model ({p.d_model}) must be divisible by policy.n_head ({p.n_head}){even}")
        longest = max(t.pretrain.max_len, t.max_prompt_tokens + t.sampling.max_new_tokens)
        if longest > p.max_len:
            raise ValueError(f"policy.max_len ({p.max_len}) is shorter than the longest sequence the run feeds the "
                             f"model: {longest} (text.pretrain.max_len, or text.max_prompt_tokens + "
                             "text.sampling.max_new_tokens)")

    def _control_fits(self) -> None:
        if self.policy.kind != "mlp":
            raise ValueError(f"policy.kind {self.policy.kind!r} is for text environments; use 'mlp'")
        if self.text is not None:
            raise ValueError("the text section is for text environments (such as lmpo/Support-v0)")
        if self.train.precision != "fp32":
            raise ValueError("train.precision bf16 is for language-model policies (text environments)")
        from lmpo.envs.vector import control_env_problem

        problem = control_env_problem(self.env.id, self.env.kwargs)
        if problem:
            raise ValueError(problem)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.is_text:
            if self.policy.kind not in LM_KINDS:
                raise ValueError(f"{self.env.id} needs policy.kind in {', '.join(LM_KINDS)}")
            if self.policy.kind == "hf" and not self.policy.path:
                raise ValueError("policy.kind 'hf' needs policy.path (a local directory or hub id)")
            if self.text is None:
                self.text = TextConfig()
            self._lora_fits(self.text)
            self._fsdp_fits()
            self._blocks_fit()
            self._transformer_fits(self.text)
            if self.algo.advantage.baseline in ("loo", "group") and self.text.samples_per_prompt < 2:
                raise ValueError(f"algo.advantage.baseline {self.algo.advantage.baseline!r} compares a prompt's "
                                 "samples with each other: text.samples_per_prompt must be at least 2")
            return self
        self._control_fits()
        if self.policy.lora is not None or self.policy.gradient_checkpointing or self.policy.compile \
                or self.train.fsdp:
            raise ValueError("policy.lora, policy.gradient_checkpointing, policy.compile and train.fsdp are for "
                             "language-model policies (text environments)")
        adv = self.algo.advantage
        if adv.needs_value and self.policy.critic == "none":
            raise ValueError("algo.advantage needs a value function but policy.critic is 'none'")
        if self.algo.name == "trpo" and self.policy.critic == "shared":
            raise ValueError("TRPO needs policy.critic 'separate' (value regression must not move the actor)")
        if adv.baseline in ("loo", "group") and self.rollout.mode != "episodes":
            raise ValueError(f"algo.advantage.baseline {adv.baseline!r} needs rollout.mode 'episodes'")
        if adv.estimator == "returns" and self.rollout.mode == "steps" and adv.baseline != "value":
            raise ValueError(
                "Monte-Carlo returns in rollout.mode 'steps' cut episodes at the rollout's end; "
                "use rollout.mode 'episodes' or algo.advantage.baseline 'value'"
            )
        return self


def format_error(e: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``where: what``."""
    parts = []
    for err in e.errors():
        loc = prefix + ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
        loc = ".".join(p for p in loc.split(".") if p and p not in ("reinforce", "trpo", "ppo"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown algorithm {err['input'].get('name')!r} (choose reinforce, trpo or ppo)"
            loc = "algo.name"
        elif "input" in err and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        msg = msg.removeprefix("Value error, ")
        named = re.match(r"(\w+): ", msg)  # a section's own check naming its key: "algo" + "lr: ..." -> "algo.lr"
        if named and loc and err["type"] == "value_error":
            loc, msg = f"{loc}.{named[1]}", msg[named.end():]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'algo.lr=3e-4'`` -> ``(['algo', 'lr'], 0.0003)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    if not re.fullmatch(r"[\w.\-]+", key):
        raise ConfigError(f"override {item!r}: a key is letters, digits, '_', '-' and dots")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits, brackets nested thousands deep
        raise ConfigError(f"override {key}: the value cannot be read ({type(e).__name__})") from None
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as text; for env.kwargs nothing else would convert it
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating sections as needed). An ``algo.name`` that switches the
    algorithm starts the ``algo`` section afresh: the new algorithm's own defaults, plus the ``algo.*``
    overrides given with it (the recipe's settings were for the other algorithm)."""
    names = [value for path, value in map(parse_override, overrides) if path == ["algo", "name"]]
    algo = data.get("algo")
    if names and isinstance(algo, dict) and algo.get("name", "ppo") != names[-1]:
        data["algo"] = {}
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for p in path[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def build_config(data: dict[str, Any]) -> Config:
    """Validate a nested dict; raises ``ConfigError`` with one clear line."""
    if isinstance(data.get("algo"), dict) and "name" not in data["algo"]:
        data["algo"] = {"name": "ppo", **data["algo"]}  # the default algorithm, as when the section is left out
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config: {format_error(e)}") from None
    from lmpo.envs.text import text_env

    family = text_env(cfg.env.id)
    if family is not None:  # a text environment's own settings
        try:
            family.Settings.model_validate(cfg.env.kwargs)
        except ValidationError as e:
            raise ConfigError(f"invalid config: {format_error(e, 'env.kwargs.')}") from None
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or start from the defaults when ``path`` is None) and apply overrides."""
    return build_config(apply_overrides(read_yaml(path) if path is not None else {}, overrides or []))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML recipe's mapping of sections; a missing, unreadable or malformed file is one ``ConfigError`` line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" if not p.exists() else f"{p} is not a file")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits, nesting thousands deep
        raise ConfigError(f"{p}: a value cannot be read ({type(e).__name__}: {str(e)[:80]})") from None
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or "unreadable"
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML ({problem})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return loaded or {}


def reference_markdown() -> str:
    """``docs/configuration.md``: every section's keys, defaults and descriptions, from the models above."""

    def table(model: type[BaseModel], title: str, subsections: bool = False) -> list[str]:
        rows = [f"## `{title}`", "", "| key | default | description |", "|---|---|---|"]
        for key, f in model.model_fields.items():
            if key == "name" or subsections and isinstance(f.annotation, type) and issubclass(f.annotation, Section):
                continue  # the algorithm's name is in the title; a subsection has its own table
            default = f.get_default(call_default_factory=True)
            if isinstance(default, Section):
                default = default.model_dump()
            rows.append(f"| `{key}` | `{default}` | {(f.description or '').replace('|', chr(92) + '|')} |")
        return [*rows, ""]

    lines = ["# Configuration reference", "",
             "Generated from the pydantic models in `lmpo/config.py` (the single place a setting is documented;",
             "`tests/test_config.py` checks this file against them). Every section rejects unknown keys. Top level:",
             "`name` (run directory name), `seed`, and the sections below.", ""]
    for key, model in (("env", EnvConfig), ("policy", PolicyConfig), ("rollout", RolloutConfig),
                       ("train", TrainConfig)):
        lines += table(model, key)
    for algo in (ReinforceConfig, TRPOConfig, PPOConfig):
        lines += table(algo, f"algo (name: {algo.model_fields['name'].default})")
    lines += table(LoraSection, "policy.lora (hf policies)")
    lines += table(AdvantageConfig, "algo.advantage")
    lines += table(TextConfig, "text (text environments only)", subsections=True)
    for key, f in TextConfig.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, Section):
            lines += table(f.annotation, f"text.{key}")
    from lmpo.envs.text import registered_text_envs

    for env_id, family in registered_text_envs().items():
        lines += table(family.Settings, f"env.kwargs ({env_id})")
    return "\n".join(lines)
