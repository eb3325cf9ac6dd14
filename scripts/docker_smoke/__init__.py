"""Build the image and run the compose stack for real on a machine that cannot pull images (make docker-smoke)."""
