-- A product image's thumbnail is made by a `thumbnail` job on the queue, owned by whoever
-- attached the image: the image points at that job, whose record keeps the state, attempts,
-- progress and error that the in-process runner kept here. A job record deleted after its
-- retention leaves the link NULL (whether the thumbnail file exists then tells the outcome).
ALTER TABLE product_images
    ADD COLUMN thumbnail_job uuid REFERENCES jobs (id) ON DELETE SET NULL;

CREATE INDEX product_images_thumbnail_job ON product_images (thumbnail_job);

-- What the in-process runner left behind becomes job records: a thumbnail not yet made (it
-- would have been taken up at the next start) a queued job, which the relay dispatches (it is
-- not marked dispatched); a failed one a failed job with its error. A made one needs none.
CREATE TEMPORARY TABLE carried_over ON COMMIT DROP AS
SELECT product_id, file_id, attached_by, attached_at, updated_at,
       thumbnail_state = 'failed' AS failed, thumbnail_error, gen_random_uuid() AS job_id
FROM product_images
WHERE thumbnail_state <> 'succeeded';

INSERT INTO jobs (id, type, topic, owner_id, state, params, attempts, max_attempts, error,
                  created_at, finished_at, dispatched_at)
SELECT job_id, 'thumbnail', 'default', attached_by,
       CASE WHEN failed THEN 'failed' ELSE 'queued' END,
       jsonb_build_object('file_id', file_id),
       CASE WHEN failed THEN 1 ELSE 0 END,
       3,
       thumbnail_error,
       attached_at,
       CASE WHEN failed THEN updated_at END,
       CASE WHEN failed THEN updated_at END
FROM carried_over;

UPDATE product_images i SET thumbnail_job = c.job_id
FROM carried_over c
WHERE i.product_id = c.product_id;

DROP INDEX product_images_unfinished;
ALTER TABLE product_images DROP COLUMN thumbnail_state, DROP COLUMN thumbnail_error;
