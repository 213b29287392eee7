"""Routing tables, written by the controller and read by every proxy: the table
(``table``), the store Protocol with its SQLite and static stores (``store``) and the
ConfigMap store of cluster mode (``configmap``)."""
