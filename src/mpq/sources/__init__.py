"""Sources of samples: folders, hub datasets and the offline ones (photos, rendered text, speech, music), each a registered ``Source``."""
