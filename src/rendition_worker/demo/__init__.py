"""The demo site: a small gallery whose photos get renditions from a real Celery worker.

`rendition_worker.demo.settings` configures it from the environment (see that module);
`rendition-worker demo` runs it on embedded defaults, and Docker Compose in production form.
"""
