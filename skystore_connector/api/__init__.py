"""The S3 API's pieces (route table, handlers by concern, request parsing, XML); ``gateway.py`` has the app."""
