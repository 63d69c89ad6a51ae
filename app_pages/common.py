"""Temporary: app_pages/predict.py still imports from here until its import line moves to app_pages.parts.common."""
from app_pages.parts.common import *
from app_pages.parts.common import SOURCE_KEY  # noqa: F401
