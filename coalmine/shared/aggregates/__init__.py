"""The proxies' own counts per release, arm and minute: the cell and its JSON form
(``model``), the store Protocols (``store``), the SQLite table of local mode
(``sqlite``) and the ConfigMaps of cluster mode (``configmap``)."""
