"""Invoke task collections. Tasks are thin: parse flags, call one library function, render."""
