"""The demo's research (docs/demo.md): scripts run as `python -m bench.demo_research.<name>`, variants, results."""
