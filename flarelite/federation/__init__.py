"""The long-lived federation: a server that waits for sites and jobs (``server.py``), sites that stay connected
and run each job in a fresh process (``site.py``), the control calls between them and the admins
(``control.py``, ``transfers.py``, ``archive.py``) and the server's job records (``jobs.py``).

Built on the one-job processes of ``flarelite.launch``: each job is a job server process and one job client
process per site, exactly what ``flarelite server JOB`` and ``flarelite client`` run.
"""
