"""Files in and out: the write policy (``outputs``), checkpoints, the torch.export reader
(``program``, ``moves``, ``aten``, ``conversion``), importers and export.
May import: ``network``, ``spec``.
"""
