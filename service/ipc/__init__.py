"""Front worker processes <-> the engine process: framed messages over a Unix socket, tensors in shared memory."""
