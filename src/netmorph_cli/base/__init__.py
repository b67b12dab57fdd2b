"""The foundation every stage stands on: resource caps (``limits``), devices and dtypes
(``runtime``), old import paths kept working (``compat``). May import: ``errors`` only.
"""
