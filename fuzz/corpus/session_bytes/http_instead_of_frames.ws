GET / HTTP/1.1
Host: a.example

