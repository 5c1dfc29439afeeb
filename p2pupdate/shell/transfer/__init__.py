"""Swarm and storage: the fetch and serve loops, the chunk stores, hashing files."""
