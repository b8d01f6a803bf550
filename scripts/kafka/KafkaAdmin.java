// The little Kafka admin that scripts/kafka.sh needs, run from source by
// `java` (no build step, no kafka-tools): readiness and topic creation.
//
//   java -cp 'LIBS/*' KafkaAdmin.java ready  BOOTSTRAP
//   java -cp 'LIBS/*' KafkaAdmin.java create BOOTSTRAP TOPIC PARTITIONS [name=value ...]
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;

public class KafkaAdmin {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: KafkaAdmin ready|create BOOTSTRAP ...");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put("bootstrap.servers", args[1]);
        p.put("request.timeout.ms", "5000");
        p.put("default.api.timeout.ms", "10000");
        try (Admin admin = Admin.create(p)) {
            switch (args[0]) {
                case "ready": {
                    // a metadata request that the broker answered
                    int nodes = admin.describeCluster().nodes().get(10, TimeUnit.SECONDS).size();
                    admin.listTopics().names().get(10, TimeUnit.SECONDS);
                    System.out.println("ready: " + nodes + " broker(s)");
                    break;
                }
                case "create": {
                    String name = args[2];
                    int partitions = Integer.parseInt(args[3]);
                    Map<String, String> configs = new HashMap<>();
                    for (int i = 4; i < args.length; i++) {
                        String[] kv = args[i].split("=", 2);
                        configs.put(kv[0], kv[1]);
                    }
                    NewTopic t = new NewTopic(name, Optional.of(partitions), Optional.empty()).configs(configs);
                    try {
                        admin.createTopics(List.of(t)).all().get(30, TimeUnit.SECONDS);
                        System.out.println("created topic " + name);
                    } catch (ExecutionException e) {
                        if (e.getCause() instanceof TopicExistsException) {
                            System.out.println("topic " + name + " exists");
                        } else {
                            throw e;
                        }
                    }
                    break;
                }
                default:
                    System.err.println("unknown command " + args[0]);
                    System.exit(2);
            }
        }
    }
}
