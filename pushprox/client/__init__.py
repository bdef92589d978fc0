"""
The client's side: the poll, scrape and push loop, its link to the proxy (directly, through
an HTTP proxy or a ``CONNECT`` tunnel), and the names it registers.
"""
