"""Donation alerts, web side: each user's secret webhook (model, admin, views).

The Redis queue the webhook fills is alerts/queue.py; the component that
delivers it is livestream/components/alert_manager.py; the page overlay is
dashboard/static/dashboard/alerts.js.
"""
