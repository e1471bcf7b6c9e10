"""Tests of the service as deployed: the Compose file's commands and Flower, in real processes."""
