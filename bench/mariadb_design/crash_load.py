import MySQLdb
c = MySQLdb.connect(host="127.0.0.1", user="root", db="design_v1", local_infile=1); cur = c.cursor()
cur.execute("START TRANSACTION")
cur.execute("LOAD DATA LOCAL INFILE '/tmp/mariadb_design/v1m.csv' INTO TABLE big__s FIELDS TERMINATED BY ',' (id, proba_false, proba_true, ab_bucket, input_hash) SET model_version = 3")
cur.execute("COMMIT")
