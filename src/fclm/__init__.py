"""fclm: one Qwen2.5-VL model that describes regions and grounds text (FCLM, CVPR 2026)."""
__version__ = "0.1.0"

from .model import FCLMConfig, FCLMForConditionalGeneration, FCLMProcessor  # noqa: E402  (registers Auto classes)


def __getattr__(name):
    if name == "FCLMPipeline":
        from .infer.pipeline import FCLMPipeline

        return FCLMPipeline
    raise AttributeError(name)


__all__ = ["FCLMConfig", "FCLMForConditionalGeneration", "FCLMProcessor", "FCLMPipeline", "__version__"]
