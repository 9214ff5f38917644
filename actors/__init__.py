"""Actor tree of the gateway (Thespian). Modules here never import Flask."""
