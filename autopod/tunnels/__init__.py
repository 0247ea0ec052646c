"""SSH tunnels to ComfyUI that outlive the terminal: the manager, the detached daemon, the fast relay,
host-key pinning, targets (pods and inventory hosts), the recorded tunnels, local ports and logs."""
