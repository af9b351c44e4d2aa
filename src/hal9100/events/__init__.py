"""Run events on their way from the executor to the clients that stream them."""
