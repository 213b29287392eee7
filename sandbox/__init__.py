"""A local sandbox for the demo: a sample support agent traced with Langfuse, a judge that
scores its traces late, example policies and sample streams."""
