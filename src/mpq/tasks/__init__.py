"""Task models: classification, segmentation, object detection, OCR, speech recognition and separation, each a registered ``Task``."""
