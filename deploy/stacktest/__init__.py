"""The pieces of ``make stack-test`` (deploy/stack_test.py): Docker and the images, one compose
stack, HTTPS calls to it, and the checks an install must pass."""
