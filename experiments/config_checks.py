"""Schema of the decode app's config, and the checks that run right after composition.

Why a separate module: the app (`experiments.decode`), the compose API (tests, notebooks)
and sweeps share one definition of what a valid run is, and every check here runs before
any weights load, so a bad sweep point fails in seconds with the offending key named
("budget.alpha must be > 0, got -1.0"). The policy constructors stay the single source of
truth for their own argument ranges: we instantiate them (cheap, no model) and re-label
their errors with the config key. Model facts come from config.json alone
(`focuslib.loading.read_config`), never from the weights. The decoder's own request rules
(`focuslib.requests.request_problems`: steps against the blocks, the block grid, each task
prompt encoded by the checkpoint's tokenizer, when it has one) run here too, with the
decoder's messages, so nothing that `generate` would refuse passes `check_only=true`. Keys
the schema does not have are errors, including those added with Hydra's `+key=value`.
`clean_errors` turns these errors into Hydra's compact report (message, no traceback).
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from focuslib.cache import CACHE_MODES, CACHE_OPTIONS
from focuslib.requests import encode_prompts, request_problems
from focuslib.eviction import as_policy_list as _as_list  # the decoder's own normaliser: what validates, decodes
from focuslib.loading import CheckpointError, load_tokenizer, read_config, resolve_checkpoint
from focuslib.model import ModelConfig
from focuslib.tasks import TASK_NAMES, Task, load_task

# -------------------------------------------------------------------------- schema


@dataclass
class ModelSpec:
    """Arguments of focuslib.load_model (path = bundled name or checkpoint directory)."""

    path: str = MISSING
    dtype: Optional[str] = None
    device: str = "cpu"
    config_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CacheSpec:
    mode: Optional[str] = None  # None = the family's exact default (none / block)
    options: Dict[str, Any] = field(default_factory=dict)  # the mode's options (focuslib.cache.CACHE_OPTIONS)


@dataclass
class TaskSpec:
    """Arguments of focuslib.tasks.load_task(name, n, seed, **options)."""

    name: str = "mix"
    n: int = 64
    seed: Any = "test"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DecodeConfig:
    """Top level of conf/config.yaml. Policy groups and the logger are `_target_` nodes (or empty = None)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    unmasking: Any = None
    eviction: Any = None
    budget: Any = None
    cache: CacheSpec = field(default_factory=CacheSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    logger: Any = None
    gen_length: int = 16
    steps: Optional[int] = None
    block_size: Optional[int] = None
    batch_size: int = 32
    repeats: int = 1
    seed: int = 0
    cfg_scale: float = 0.0
    threads: Optional[int] = None
    compile: bool = False
    show: int = 3
    progress: bool = True
    check_only: bool = False


ConfigStore.instance().store(name="decode_schema", node=DecodeConfig)


def group_options(config_name: str, *groups: str) -> str:
    """'group: option, option' lines for an app's --help, from the app's config search path as its primary config
    `config_name` sets it (Hydra's own loader, hydra.searchpath included). The `focuslib_groups` resolver of the help
    templates in conf/bench.yaml and experiments/train_conf/train.yaml: bench shares conf/ with the decode app, so
    Hydra's $APP_CONFIG_GROUPS would list groups it cannot use."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return "\n".join(groups)
    loader = GlobalHydra.instance().config_loader()
    return "\n".join(f"{g}: {', '.join(sorted(loader.get_group_options(g, config_name=config_name)))}" for g in groups)


OmegaConf.register_new_resolver("focuslib_groups", group_options, replace=True)

# -------------------------------------------------------------------------- checks


class ConfigError(ValueError):
    """One or more config values are invalid; the message names every offending key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid config:\n  - " + "\n  - ".join(problems))


@dataclass
class Plan:
    """Everything a run needs except the weights, built and checked from the config."""

    unmasking: Any
    eviction: Any  # as built: None, one policy, a Stack or a list; the decoder normalises it
    budget: Any
    logger: Any
    model_path: Path
    model_cfg: ModelConfig
    cache: Optional[str]
    cache_options: Dict[str, Any]
    block_size: Optional[int]
    steps: Optional[int]
    task: Task
    cfg_scale: float = 0.0  # DiffusionDecoder(cfg_scale=): classifier-free guidance, 0 = off


def plan_run(cfg: DictConfig) -> Plan:
    """Check `cfg` and build the policies, task and model facts; raise ConfigError naming every bad key."""
    problems: list[str] = []
    check_unknown_keys(cfg, DecodeConfig, problems)
    _check_scalars(cfg, problems)
    unmasking = _build(cfg, "unmasking", problems)
    eviction = _build(cfg, "eviction", problems)
    budget = _build(cfg, "budget", problems)
    logger = _build(cfg, "logger", problems)
    if unmasking is None and not any("unmasking" in p for p in problems):
        problems.append("unmasking: an unmasking policy is required (e.g. unmasking=threshold)")
    _check_guidance(cfg, eviction, problems)
    task = _build_task(cfg, problems)
    model_path, model_cfg = _read_model(cfg, problems)
    steps = cfg.steps
    if model_cfg is not None:
        _check_against_model(cfg, model_cfg, eviction, budget, problems)
        steps = _resolve_steps(cfg, unmasking)
        check_request(cfg, model_path, model_cfg, unmasking, steps, task, problems)
    if problems:
        raise ConfigError(problems)
    return Plan(unmasking=unmasking, eviction=eviction, budget=budget, logger=logger, model_path=model_path,
                model_cfg=model_cfg, cache=cfg.cache.mode,
                cache_options=OmegaConf.to_container(cfg.cache.options), block_size=cfg.block_size, steps=steps, task=task,
                cfg_scale=float(cfg.cfg_scale))


def check_unknown_keys(cfg: DictConfig, schema: type, problems: list[str], prefix: str = "") -> None:
    """Keys the schema does not declare (Hydra's `+key=value` adds them even to a structured config).

    Recurses into the schema's dataclass-typed nodes (model, cache, task); free-form nodes
    (Any or Dict fields: policy groups, options, config_overrides) are checked where they are used.
    """
    if not isinstance(cfg, DictConfig):
        return
    known = {f.name: f for f in fields(schema)}
    for key in cfg.keys():
        name = f"{prefix}{key}"
        if key not in known:
            if not prefix and key == "hydra":  # compose(..., return_hydra_config=True)
                continue
            where = f"{prefix.rstrip('.')}" if prefix else "the top level"
            problems.append(f"{name}: unknown key (an override +{name}=... adds a key the schema does not have); "
                            f"keys at {where}: {', '.join(known)}")
            continue
        sub = known[key].default_factory  # ModelSpec, CacheSpec, TaskSpec; dataclasses.MISSING for the rest
        if isinstance(sub, type) and is_dataclass(sub):
            check_unknown_keys(cfg.get(key), sub, problems, f"{name}.")


def _check_scalars(cfg: DictConfig, problems: list[str]) -> None:
    """Type checks come from the schema; these are the ranges."""
    at_least = {"gen_length": 1, "batch_size": 1, "repeats": 1, "steps": 1, "block_size": 1, "threads": 1, "show": 0,
                "task.n": 1}
    for key, low in at_least.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < low:
            problems.append(f"{key} must be >= {low}, got {value}")


def _check_guidance(cfg: DictConfig, eviction: Any, problems: list[str]) -> None:
    """cfg_scale: the decoder's own rules (>= 0; no eviction with guidance), checked before loading."""
    scale = cfg.cfg_scale
    if scale < 0:
        problems.append(f"cfg_scale must be >= 0 (0 = no classifier-free guidance), got {scale}")
    elif scale > 0 and _as_list(eviction):
        problems.append("cfg_scale > 0 cannot be combined with eviction policies (eviction=none, or cfg_scale=0)")


def _build(cfg: DictConfig, group: str, problems: list[str], prefix: str | None = None) -> Any:
    """Instantiate a `_target_` group (None when its config is empty); constructor errors name the key
    (`prefix`, default the group)."""
    node = cfg.get(group)
    if _empty(node):
        return None
    try:
        return instantiate(node)
    except Exception as err:  # hydra wraps the constructor's error; report the original
        cause = err.__cause__ or err
        problems.append(keyed(prefix or group, _keys(node), str(cause).strip()))
        return None


def _empty(node: Any) -> bool:
    """A group whose option is comment-only (e.g. eviction=none): the policy is None."""
    return node is None or (isinstance(node, DictConfig) and not node)


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves under a group node ('threshold', 'policies.0.layer'), `_target_` excluded."""
    if isinstance(node, DictConfig):
        items = [(str(k), v) for k, v in node.items_ex(resolve=False) if k != "_target_"]
    elif isinstance(node, ListConfig):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return [prefix.rstrip(".")] if prefix else []
    return [leaf for k, v in items for leaf in _keys(v, f"{prefix}{k}.")]


def keyed(prefix: str, keys: Iterable[str], message: str) -> str:
    """Prefix `message` with the config key it is about: 'alpha must be > 0' -> 'budget.alpha must be > 0'.

    keys may be dotted paths; a path matches when its last part is named in the message.
    """
    path = _mentioned(keys, message)
    if path is None:
        return f"{prefix}: {message}"
    name = path.rsplit(".", 1)[-1]
    return f"{prefix}.{path}{message[len(name):]}" if message.startswith(f"{name} ") else f"{prefix}.{path}: {message}"


def _mentioned(keys: Iterable[Any], message: str) -> str | None:
    """The key (dotted path) whose last part is named as a word in `message`; longest names first."""
    for path in sorted(map(str, keys), key=lambda k: len(k.rsplit(".", 1)[-1]), reverse=True):
        if re.search(rf"\b{re.escape(path.rsplit('.', 1)[-1])}\b", message):
            return path
    return None


def _build_task(cfg: DictConfig, problems: list[str]) -> Task | None:
    spec = cfg.task
    if spec.name not in TASK_NAMES:
        problems.append(f"task.name must be one of {', '.join(TASK_NAMES)}; got {spec.name!r}")
        return None
    missing = [k for k in spec.options if OmegaConf.is_missing(spec.options, k)]
    if missing:
        problems.extend(f"task.options.{k} is required for task {spec.name} (set task.options.{k}=...)"
                        for k in missing)
        return None
    if spec.n < 1:
        return None  # already reported
    options = OmegaConf.to_container(spec.options, resolve=True)
    if options.get("chat") is True:  # the prompts go through the checkpoint's chat template: read its tokenizer
        if OmegaConf.is_missing(cfg.model, "path"):
            return None  # reported by _read_model
        try:
            path = resolve_checkpoint(cfg.model.path)
        except (ValueError, FileNotFoundError):
            return None  # reported by _read_model
        try:
            options["tokenizer"] = _tokenizer(str(path))
        except Exception as err:
            problems.append(f"model.path: {err}")
            return None
    try:
        return load_task(spec.name, spec.n, spec.seed, **options)
    except Exception as err:  # an option's value, else n or seed (e.g. more problems than the file holds)
        message = str(err)
        named = _mentioned(spec.options, message) or _option_by_value(spec.options, message)
        problems.append(f"task.options.{named}: {message}" if named else keyed("task", ["n", "seed"], message))
        return None


def _option_by_value(options: DictConfig, message: str) -> str | None:
    """The option whose (non-trivial) value the message quotes, e.g. a file path that does not exist."""
    for key, value in options.items():
        if isinstance(value, str) and len(value) > 2 and value in message:
            return str(key)
    return None


def _read_model(cfg: DictConfig, problems: list[str]) -> tuple[Path | None, ModelConfig | None]:
    spec = cfg.model
    if OmegaConf.is_missing(spec, "path"):
        problems.append("model.path is required: set model.path=<downloaded checkpoint directory>")
        return None, None
    _check_dtype_device(spec, problems)
    try:
        path = resolve_checkpoint(spec.path)
    except (ValueError, FileNotFoundError) as err:
        problems.append(f"model.path: {err}")
        return None, None
    try:
        return path, read_config(path, OmegaConf.to_container(spec.config_overrides, resolve=True))
    except Exception as err:
        problems.append(f"model.config_overrides / model.path: cannot parse {path / 'config.json'}: {err}")
        return None, None


def _check_dtype_device(spec: DictConfig, problems: list[str]) -> None:
    if spec.dtype not in (None, "auto") and not isinstance(getattr(torch, str(spec.dtype), None), torch.dtype):
        problems.append(f"model.dtype must be a torch dtype name (bfloat16, float16, float32), 'auto' or null; "
                        f"got {spec.dtype!r}")
    try:
        device = torch.device(spec.device)
    except RuntimeError as err:
        problems.append(f"model.device: {err}")
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        problems.append("model.device is cuda but no CUDA device is visible (set model.device=cpu)")


def _check_against_model(cfg: DictConfig, model_cfg: ModelConfig, eviction: Any, budget: Any,
                         problems: list[str]) -> None:
    """Checks that need the family: cache mode, block grid, eviction requirements."""
    if cfg.gen_length >= model_cfg.max_positions:
        problems.append(f"gen_length={cfg.gen_length} leaves no room for a prompt within the model's "
                        f"max_positions {model_cfg.max_positions}")
    _check_cache(cfg.cache, cfg.model.path, model_cfg, problems)
    if model_cfg.block_diffusion and cfg.block_size not in (None, model_cfg.block_size):
        problems.append(f"block_size={cfg.block_size} differs from the model's block-causal block "
                        f"{model_cfg.block_size}; block-diffusion families decode on their own grid "
                        "(block_size=null)")
    _check_eviction(cfg.get("eviction"), cfg.get("budget"), "eviction", "budget", model_cfg, eviction, problems)


def _check_cache(spec: DictConfig, model_path: Any, model_cfg: ModelConfig, problems: list[str]) -> None:
    modes = CACHE_MODES[model_cfg.attention]
    if spec.mode is not None and spec.mode not in modes:
        problems.append(f"cache.mode {spec.mode!r} does not apply to {model_cfg.attention}-attention models "
                        f"({model_path}); choose one of {', '.join(modes)} or cache=auto")
    allowed = CACHE_OPTIONS.get(spec.mode, ())
    for key in sorted(set(spec.get("options") or {}) - set(allowed)):
        problems.append(f"cache.options.{key}: cache mode {spec.mode!r} has no such option; its options: "
                        f"{list(allowed)}")


def _check_eviction(node: Any, budget_node: Any, key: str, budget_key: str, model_cfg: ModelConfig, eviction: Any,
                    problems: list[str]) -> None:
    """The eviction policies' own model checks, and that a ranking policy has a budget."""
    for policy in _as_list(eviction):
        check = getattr(policy, "check", None)
        try:
            if check is not None:
                check(model_cfg)
        except Exception as err:
            problems.append(keyed(key, _keys(node), str(err)))
        if getattr(policy, "uses_budget", False) and _empty(budget_node):  # (not: budget failed to build)
            problems.append(f"{budget_key}: eviction policy {type(policy).__name__} ranks rows and needs a budget "
                            "(e.g. budget=focus)")


def _resolve_steps(cfg: DictConfig, unmasking: Any) -> Optional[int]:
    """steps=null means gen_length for schedule policies (one token per step) and no cap for dynamic ones."""
    steps = cfg.steps
    if steps is None and getattr(unmasking, "needs_schedule", False):
        steps = cfg.gen_length
    return steps


MAX_PROMPT_PROBLEMS = 3  # a bad rule usually hits many of a task's prompts: name the first few, count the rest


def check_request(cfg: DictConfig, model_path: Path | None, model_cfg: ModelConfig, unmasking: Any,
                  steps: Optional[int], task: Task | None, problems: list[str]) -> None:
    """The decoder's own request rules (`request_problems`, the same code `generate` runs), with
    the task's prompts encoded by the checkpoint's tokenizer when it has one: unknown characters, empty
    prompts, prompt + gen_length beyond max_positions, the block grid, steps against the blocks."""
    if unmasking is None or any(p.startswith(("gen_length", "steps", "block_size")) for p in problems):
        return  # already reported with the key
    ids = _task_ids(model_path, task, problems) if task is not None and model_path is not None else None
    block = model_cfg.block_size if model_cfg.block_diffusion else cfg.get("block_size")
    found = request_problems(model_cfg, cfg.gen_length, steps, block_size=block,
                                              unmasking=unmasking, prompts=ids)
    prompt_problems = [str(e) for e in found if str(e).startswith("prompt ")]
    problems.extend(f"task: {m}" for m in prompt_problems[:MAX_PROMPT_PROBLEMS])
    if len(prompt_problems) > MAX_PROMPT_PROBLEMS:
        problems.append(f"task: ... {len(prompt_problems)} prompts in all fail the decoder's checks")
    problems.extend(str(e) for e in found if not str(e).startswith("prompt "))


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    return load_tokenizer(path)


def _task_ids(model_path: Path, task: Task, problems: list[str]) -> list[list[int]] | None:
    """The task's prompts as the decoder will encode them; None when the checkpoint has no tokenizer files."""
    try:
        tokenizer = _tokenizer(str(model_path))
    except Exception as err:
        problems.append(f"model.path: {err}")
        return None
    if tokenizer is None:
        return None  # generate() will say that text prompts need a tokenizer
    try:
        return encode_prompts(list(task.prompts), tokenizer)
    except (TypeError, ValueError) as err:  # names the first bad prompt
        problems.append(f"task: {err}")
        return None


# -------------------------------------------------------------------------- bench


def plan_bench(cfg: DictConfig, stacks: dict[str, Any]) -> None:
    """The checks of `plan_run` for experiments.bench's config (conf/bench.yaml): raise ConfigError naming every
    bad key before any weights load. stacks: name -> stack node (eviction, budget) as the bench runs them."""
    problems: list[str] = []
    at_least = {"n_examples": 1, "repeats": 1, "gen_length": 1, "steps": 1, "threads": 1}
    for key, low in at_least.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            problems.append(f"{key} must be an int >= {low}, got {value!r}")
    for key in ("regime", "quality", "compile"):
        if not isinstance(cfg.get(key, False), bool):
            problems.append(f"{key} must be true or false, got {cfg.get(key)!r}")
    sizes = cfg.get("batch_sizes")
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        problems.append(f"batch_sizes must be a non-empty list of ints >= 1, got {sizes}")
    unmasking = _build(cfg, "unmasking", problems)
    if unmasking is None and not any("unmasking" in p for p in problems):
        problems.append("unmasking: an unmasking policy is required (e.g. unmasking=threshold)")
    built = {}
    for name, spec in stacks.items():
        key = f"stacks.{name}"
        eviction = _build(spec, "eviction", problems, prefix=f"{key}.eviction")
        _build(spec, "budget", problems, prefix=f"{key}.budget")
        for extra in sorted(set(spec or {}) - {"eviction", "budget", "cache_options"}):
            problems.append(f"{key}.{extra}: a stack has only eviction, budget and cache_options")
        allowed = CACHE_OPTIONS.get(cfg.cache.mode, ())
        for option in sorted(set((spec or {}).get("cache_options") or {}) - set(allowed)):
            problems.append(f"{key}.cache_options.{option}: cache mode {cfg.cache.mode!r} has no such option; "
                            f"its options: {list(allowed)}")
        built[name] = (spec, eviction)
    task, options = None, cfg.task.get("options")
    try:
        task = load_task(cfg.task.name, cfg.n_examples, seed=cfg.task.seed,
                         **(OmegaConf.to_container(options, resolve=True) if options else {}))
    except Exception as err:
        problems.append(f"task: {err}")
    model_path, model_cfg = _read_model(cfg, problems)
    if model_cfg is not None:
        _check_cache(cfg.cache, cfg.model.path, model_cfg, problems)
        if model_cfg.block_diffusion and cfg.get("block_size") not in (None, model_cfg.block_size):
            problems.append(f"block_size={cfg.block_size} differs from the model's block-causal block "
                            f"{model_cfg.block_size} (block_size=null)")
        for name, (spec, eviction) in built.items():
            _check_eviction(spec.get("eviction"), spec.get("budget"), f"stacks.{name}.eviction",
                            f"stacks.{name}.budget", model_cfg, eviction, problems)
        check_request(cfg, model_path, model_cfg, unmasking, cfg.get("steps"), task, problems)
    if problems:
        raise ConfigError(problems)


# -------------------------------------------------------------------------- apps


class AppError(CompactHydraException):
    """A config or checkpoint error of an app's run: Hydra prints its message alone, without a traceback (and in a
    sweep still runs the remaining points, then exits non-zero)."""


@contextmanager
def clean_errors(*types: type[BaseException]) -> Iterator[None]:
    """In a Hydra app's entry: an error of `types` (default: ConfigError, CheckpointError) becomes an AppError,
    which Hydra reports as the message alone and exit status 1. HYDRA_FULL_ERROR=1 keeps the original error
    and its full traceback."""
    try:
        yield
    except (types or (ConfigError, CheckpointError)) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise AppError(f"error: {err}") from err
