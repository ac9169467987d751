"""What is going on: published manager state, Prometheus metrics, the staff views."""
