"""Peer implementations of the abandoned-cart recipe (faust-streaming, quixstreams) and
:mod:`load_tests.peers.compare`, which runs them side by side on one real Kafka broker."""
