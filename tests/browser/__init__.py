"""Tests of the demo gallery in a real browser: Debian's Chromium, driven by Playwright."""
