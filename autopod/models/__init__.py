"""Models on the pod's network volume: pulled in the pod by URL, listed, removed, declared."""
