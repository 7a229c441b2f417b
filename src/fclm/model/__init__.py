"""FCLM model: config, modeling, processor, builders."""
from .configuration_fclm import FCLMConfig
from .modeling_fclm import FCLMForConditionalGeneration, FCLMOutput, register_auto_classes
from .processing_fclm import FCLMProcessor

register_auto_classes()

__all__ = ["FCLMConfig", "FCLMForConditionalGeneration", "FCLMOutput", "FCLMProcessor"]
