import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/** Prints partition, offset and the first 60 bytes of every committed record of a topic (Kafka's own client). */
public class ReadCommitted {
    public static void main(String[] args) {
        Properties p = new Properties();
        p.put("bootstrap.servers", args[0]);
        p.put("isolation.level", "read_committed");
        p.put("key.deserializer", ByteArrayDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            List<TopicPartition> tps = new ArrayList<>();
            c.partitionsFor(args[1]).forEach(i -> tps.add(new TopicPartition(args[1], i.partition())));
            c.assign(tps);
            c.seekToBeginning(tps);
            Map<TopicPartition, Long> end = c.endOffsets(tps);
            long idle = System.currentTimeMillis();
            while (System.currentTimeMillis() - idle < 5000) {
                boolean done = tps.stream().allMatch(tp -> c.position(tp) >= end.get(tp));
                if (done) break;
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                    idle = System.currentTimeMillis();
                    String v = new String(r.value());
                    System.out.println(r.partition() + " " + r.offset() + " " + v);
                }
            }
        }
    }
}
