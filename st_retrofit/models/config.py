"""Recipe section ``model``: the model being retrofitted and its LoRA adapter (read by the train and eval stages)."""

from __future__ import annotations

from pydantic import Field

from st_retrofit.config import ConfigError, ConfigModel, did_you_mean, keyed


class LoraSettings(ConfigModel):
    """LoRA adapter settings (recipe section ``model.lora``); the adapter is merged into the weights at export.

    Args:
        r: adapter rank.
        alpha: LoRA scaling numerator (``lora_alpha``).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters (``query``/``key``/``value`` in BERT-style
            encoders).
    """

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input, in [0, 1).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "key", "value"], min_length=1, description="Linear layers that get adapters."
    )


class ModelConfig(ConfigModel):
    """The model being retrofitted (recipe section ``model``).

    Args:
        base: ``offline:<name>``, a local folder or a Hub id.
        lora: LoRA settings; ``null`` trains every weight instead.
        max_seq_length: truncation length for training and evaluation; ``null`` keeps the model's own.
    """

    base: str = Field(
        "offline:multilingual-e5-small", json_schema_extra={"local_path": True}, description="Model to retrofit."
    )
    lora: LoraSettings | None = Field(default_factory=LoraSettings, description="null = full fine-tuning.")
    max_seq_length: int | None = Field(128, ge=8, description="Token limit; null keeps the model's.")

    def local_inputs(self) -> list[str]:
        return [self.base]

    def check_environment(self) -> None:
        from st_retrofit.models.resolve import ModelNotFoundError, check_model_name

        try:
            check_model_name(self.base)
        except ModelNotFoundError as exc:
            raise ConfigError("base", str(exc)) from None
        if self.lora is not None:
            with keyed("lora"):
                check_peft()
            check_lora_targets(self.base, self.lora.target_modules)


def _transformer_config(name: str):
    """The transformers config of a model already on this machine (a check never builds, assembles or downloads
    one), or ``None``."""
    import json

    from st_retrofit.models.resolve import built_folder

    folder = built_folder(name)
    if folder is None:
        return None
    modules = folder / "modules.json"
    if modules.is_file():
        folder = folder / json.loads(modules.read_text(encoding="utf-8"))[0].get("path", "")
    if not (folder / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder))


def check_lora_targets(base: str, target_modules: list[str]) -> None:
    """Every ``model.lora.target_modules`` name is a linear layer of ``base`` (checked on the architecture alone,
    built on the meta device: no weights are read). A model not on this machine yet is left to the train stage."""
    try:
        config = _transformer_config(base)
    except (OSError, ValueError):
        return
    if config is None:
        return
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    names = sorted({n.rsplit(".", 1)[-1] for n in linear})
    for i, target in enumerate(target_modules):
        # peft's rule: a target names a module by its full name or by a dotted suffix of it.
        if not any(n == target or n.endswith("." + target) for n in linear):
            hint = did_you_mean(target, names, "its linear layers are")
            raise ConfigError(f"lora.target_modules[{i}]", f"{base} has no linear layer named {target!r}{hint}")


def check_peft() -> None:
    """peft is installed and can load adapters into the installed transformers.

    transformers 5.24 loads adapters only with peft >= 0.22 (not released as of st-retrofit 0.2): the combination
    fails deep inside ``add_adapter``, so it is refused here, before any work, with the two ways out.
    """
    from importlib.metadata import version

    from packaging.version import Version

    from st_retrofit.extras import EXTRAS, MissingExtraError, has_module

    if not has_module("peft"):  # checked without importing peft, which loads torch
        raise MissingExtraError(
            "", f"LoRA needs peft, which is not installed: pip install 'st-retrofit[{EXTRAS['peft']}]'"
        )
    transformers, peft = Version(version("transformers")), Version(version("peft"))
    if transformers >= Version("5.24") and peft < Version("0.22"):
        raise ConfigError(
            "",
            f"transformers {transformers} loads adapters only with peft >= 0.22 (installed: {peft}); "
            "pip install 'transformers<5.24', or set model.lora: null for full fine-tuning",
        )
