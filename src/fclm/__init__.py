"""fclm: one Qwen2.5-VL model that describes regions and grounds text (FCLM, CVPR 2026).

``import fclm`` registers FCLM with transformers' Auto classes, so that
``transformers.AutoModel.from_pretrained(DIR)`` loads a saved FCLM folder. (The ``fclm`` console
command defers this import until a command needs the model: see :mod:`fclm_cli`.)
"""
__version__ = "0.1.0"

from .model.configuration_fclm import FCLMConfig  # noqa: E402
from .model.modeling_fclm import FCLMForConditionalGeneration, register_auto_classes  # noqa: E402
from .model.processing_fclm import FCLMProcessor  # noqa: E402

register_auto_classes()


def __getattr__(name):
    if name == "FCLMPipeline":
        from .infer.pipeline import FCLMPipeline

        return FCLMPipeline
    raise AttributeError(name)


__all__ = ["FCLMConfig", "FCLMForConditionalGeneration", "FCLMProcessor", "FCLMPipeline", "__version__"]
