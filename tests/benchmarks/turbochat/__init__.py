"""demo.chat for turbo-django 0.4.4: the same models, templates and streams, with ``import turbo``."""
