"""Tests for the provider kinds."""
