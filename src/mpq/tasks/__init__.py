"""Task models: classification, segmentation, OCR, speech recognition and separation, each a registered ``Task``."""
